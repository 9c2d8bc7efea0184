"""UDIAT Dataset B breast ultrasound: ``original/`` and ``GT/`` PNGs."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, at, register
from .pairing import pair_by_name


@register
class UDIAT(Converter):
    name = "udiat"
    title = "UDIAT Dataset B (breast ultrasound)"
    modality = "ultrasound"
    marker = "original/*.png"
    layout = "Dataset_B (or BUS_Dataset_B, BUS)/original/000001.png..000163.png + GT/000001.png..."
    domain = "source"
    esp_name = "ultrasound"
    homepage = "https://doi.org/10.1109/JBHI.2017.2731873"
    license = "on request from the authors (see the paper)"
    citation = ("Yap MH, Pons G, Marti J, et al. Automated breast ultrasound lesions detection using convolutional "
                "neural networks. IEEE J Biomed Health Inform 22(4):1218-1226, 2018.")
    fake_counts = {"train": 8, "valid": 1, "test": 1}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        return pair_by_name(tree, tree.glob(at(root, "original/*.png")),
                            lambda img: [at(root, f"GT/{img.rsplit('/', 1)[1]}")], mask_glob=at(root, "GT/*.png"))

    def split_file_id(self, source_id: str) -> str:
        return f"ultra_{source_id}"

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 10) -> Path:
        """Grey PNG ultrasound ``original/000001.png`` and 0/255 ``GT/000001.png``."""
        import numpy as np

        from ..synthetic import png, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "BUS_Dataset_B"
        for i in range(1, n + 1):
            img, mask = scene(60, 76, rng)
            write(base / "original" / f"{i:06d}.png", png(img[..., 1]))
            write(base / "GT" / f"{i:06d}.png", png(u8(mask)))
        return base
