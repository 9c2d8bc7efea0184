"""CHASE_DB1 retinal vessels: flat folder, ``Image_NN{L,R}.jpg`` with two annotators' PNG vessel maps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .pairing import pair_pattern
from .options import option


@register
class CHASEDB1(Converter):
    name = "chase-db1"
    title = "CHASE_DB1 (Child Heart and Health Study retinal images)"
    modality = "fundus"
    split_rule = "test"
    marker = "Image_*.jpg"
    layout = "CHASEDB1/Image_NN{L,R}.jpg + Image_NN{L,R}_1stHO.png + Image_NN{L,R}_2ndHO.png (28 images)"
    domain = "unseen"
    homepage = "https://blogs.kingston.ac.uk/retinal/chasedb1/"
    license = "see the official page"
    citation = ("Fraz MM, Remagnino P, Hoppe A, et al. An ensemble classification-based approach applied to retinal "
                "blood vessel segmentation. IEEE Trans Biomed Eng 59(9):2538-2548, 2012.")
    side_files = ("*_1stHO.png", "*_2ndHO.png")  # the annotator not chosen
    fake_counts = {"test": 6}

    @dataclass(frozen=True)
    class Options:
        annotator: Literal["1stHO", "2ndHO"] = option("1stHO", help="1stHO (first human observer) or 2ndHO")

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        who = self.opts.annotator
        records, failures = pair_pattern(tree, "Image_*.jpg", f"{{stem}}_{who}.png", root=self.root(tree))
        return [Record(r.source_id, r.image, r.masks, info={"annotator": who}) for r in records], failures

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 3) -> Path:
        """Flat ``Image_NN{L,R}.jpg`` with ``_1stHO.png`` and ``_2ndHO.png`` vessel maps (2n images; the second
        observer marked less)."""
        import numpy as np

        from ..synthetic import jpeg, png, scene, u8, vessels, write

        rng = np.random.default_rng(seed)
        base = root / "CHASEDB1"
        for i in range(1, n + 1):
            for eye in "LR":
                sid = f"Image_{i:02d}{eye}"
                img, _ = scene(48, 50, rng)
                first = vessels(48, 50, rng)
                second = first.copy()
                second[:, :25] = False
                write(base / f"{sid}.jpg", jpeg(img))
                write(base / f"{sid}_1stHO.png", png(u8(first)))
                write(base / f"{sid}_2ndHO.png", png(u8(second)))
        return base
