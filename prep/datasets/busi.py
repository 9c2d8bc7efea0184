"""BUSI breast ultrasound: ``<class> (N).png`` with one or more ``_mask``/``_mask_K`` files, OR-merged; the
``normal`` class has empty masks and is kept; the class goes into meta."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .pairing import pair_pattern


@register
class BUSI(Converter):
    name = "busi"
    title = "BUSI (Breast Ultrasound Images Dataset)"
    modality = "ultrasound"
    split_rule = "test"
    marker = "benign/benign (*)_mask.png"
    layout = ('Dataset_BUSI_with_GT/{benign,malignant,normal}/"<class> (N).png" + "<class> (N)_mask.png" '
              '(+ "_mask_1.png", ... extra lesions, OR-merged; masks may be RGB/RGBA; normal masks are empty); 780')
    domain = "unseen"
    esp_name = "busi"
    homepage = "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset"
    license = "see the official page"
    citation = ("Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. Data in Brief "
                "28:104863, 2020.")
    fake_counts = {"test": 8}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        records, failures = pair_pattern(tree, "*/*.png", "{dir}/{stem}_mask*.png", root=self.root(tree))
        return [Record(r.source_id, r.image, r.masks, info={"class": r.image.split("/")[-2], "lesions": len(r.masks)})
                for r in records], failures

    @staticmethod
    def fake(root: Path, seed: int = 0, n: tuple[int, int, int] = (3, 3, 2)) -> Path:
        """``<class>/<class> (N).png`` (grey as RGB) with ``_mask.png`` for ``n`` = (benign, malignant, normal);
        ``benign (2)`` has a second lesion in ``_mask_1.png``; one mask RGB, one RGBA; ``normal`` masks are empty."""
        import numpy as np

        from ..synthetic import png, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "Dataset_BUSI_with_GT"
        for cls, count in zip(("benign", "malignant", "normal"), n):
            for i in range(1, count + 1):
                name = f"{cls} ({i})"
                img, mask = scene(50, 66, rng, blobs=0 if cls == "normal" else 1)
                write(base / cls / f"{name}.png", png(np.repeat(img[..., :1], 3, axis=2)))
                m = u8(mask)
                if cls == "benign" and i == 2:
                    second = np.zeros_like(mask)
                    second[4:12, 4:14] = True
                    write(base / cls / f"{name}_mask_1.png", png(u8(second)))
                if cls == "malignant" and i == 1:
                    m = np.repeat(m[..., None], 3, axis=2)  # an RGB mask
                if cls == "malignant" and i == 2:
                    m = np.dstack([m, m, m, np.full(m.shape, 255, np.uint8)])  # an RGBA mask
                write(base / cls / f"{name}_mask.png", png(m))
        return base
