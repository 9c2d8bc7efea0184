"""Shenzhen chest X-rays with the (unofficial) Stirenko et al. lung masks ``CHNCXR_####_x_mask.png``."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree, stem
from .base import Converter, Failure, Record, at, register
from .montgomery import Montgomery
from .pairing import pair_by_name


@register
class Shenzhen(Converter):
    name = "shenzhen"
    title = "Shenzhen CXR set with Stirenko lung masks"
    modality = "x-ray"
    marker = "CXR_png/CHNCXR_*.png"
    layout = ("ChinaSet_AllFiles/CXR_png/CHNCXR_####_{0,1}.png + mask/CHNCXR_####_{0,1}_mask.png "
              "(the mask folder may sit inside or beside ChinaSet_AllFiles)")
    domain = "source"
    esp_name = "lung"
    homepage = Montgomery.homepage
    license = "see the official page (the lung masks are Stirenko et al.'s, published separately)"
    citation = (f"{Montgomery.citation} Lung masks: Stirenko S, Kochura Y, Alienin O, et al. Chest X-ray analysis of "
                "tuberculosis by deep learning with segmentation and augmentation. IEEE ELNANO 2018, 422-428 "
                "(arXiv:1803.01199).")
    fake_counts = {"train": 7, "valid": 1, "test": 1}
    fake_failures = 1  # the image without a mask

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        masks = {stem(f)[: -len("_mask")]: f for f in tree.files
                 if f.rsplit("/", 1)[-1].startswith("CHNCXR_") and f.endswith("_mask.png")}
        images = tree.glob(at(root, "CXR_png/CHNCXR_*.png"))
        records, failures = pair_by_name(  # a missing mask is named where the download puts it
            tree, images, lambda img: [masks.get(stem(img), at(root, f"mask/{stem(img)}_mask.png"))])
        used = {m for r in records for m in r.masks}
        failures += [Failure(stem(m), (m,), "mask without image") for m in sorted(masks.values()) if m not in used]
        records = [Record(r.source_id, r.image, r.masks, info={"tuberculosis": r.source_id.endswith("_1")})
                   for r in records]
        return records, failures

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 10, unmasked: int = 1) -> Path:
        """Grey X-rays stored as RGB PNG; Stirenko masks ``mask/CHNCXR_####_x_mask.png`` for all but ``unmasked``
        images (the real set has 566 masks for 662 images)."""
        import numpy as np

        from ..synthetic import png, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "ChinaSet_AllFiles"
        for i in range(n):
            name = f"CHNCXR_{i + 1:04d}_{i % 2}"
            img, mask = scene(80, 88, rng)
            write(base / "CXR_png" / f"{name}.png", png(np.repeat(img[..., :1], 3, axis=2)))
            if i < n - unmasked:
                write(base / "mask" / f"{name}_mask.png", png(u8(mask)))
        return base
