"""Kvasir-SEG colonoscopy polyps: JPEG images and JPEG-compressed masks (thresholded at half range)."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .pairing import pair_pattern


@register
class KvasirSEG(Converter):
    name = "kvasir-seg"
    title = "Kvasir-SEG (polyp segmentation)"
    modality = "colonoscopy"
    split_rule = "test"
    marker = "masks/*.jpg"
    layout = "Kvasir-SEG/images/<id>.jpg + Kvasir-SEG/masks/<id>.jpg (JPEG masks, values 0-8 and 247-255); 1000"
    domain = "unseen"
    homepage = "https://datasets.simula.no/kvasir-seg/"
    license = "see the official page"
    citation = ("Jha D, Smedsrud PH, Riegler MA, et al. Kvasir-SEG: a segmented polyp dataset. MultiMedia Modeling (MMM"
                " 2020), LNCS 11962:451-462, 2020.")
    fake_counts = {"test": 5}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        return pair_pattern(tree, "images/*.jpg", "masks/{name}", root=self.root(tree))

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 5) -> Path:
        """JPEG images and RGB JPEG masks (ringing around 0 and 255), ``kavsir_bboxes.json``."""
        import hashlib

        import numpy as np

        from ..synthetic import jpeg, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "Kvasir-SEG"
        for i in range(n):
            sid = hashlib.sha256(f"kvasir{seed}-{i}".encode()).hexdigest()[:25]
            h, w = int(rng.integers(50, 70)), int(rng.integers(60, 80))
            img, mask = scene(h, w, rng)
            write(base / "images" / f"{sid}.jpg", jpeg(img))
            write(base / "masks" / f"{sid}.jpg", jpeg(np.repeat(u8(mask)[..., None], 3, axis=2), quality=75))
        write(base / "kavsir_bboxes.json", b"{}\n")
        return base
