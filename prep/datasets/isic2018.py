"""ISIC-2018 Task 1: dermoscopy lesion segmentation, official 2594/100/1000 split."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, at, register
from .pairing import pair_by_name

_SPLITS = {"Training": "train", "Validation": "valid", "Test": "test"}


@register
class ISIC2018(Converter):
    name = "isic2018"
    title = "ISIC-2018 Task 1 (lesion boundary segmentation)"
    modality = "dermoscopy"
    split_rule = "official"
    marker = "ISIC2018_Task1-2_Training_Input/ISIC_*.jpg"
    layout = ("ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_#######.jpg + "
              "ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_#######_segmentation.png")
    domain = "source"
    esp_name = "isic"
    homepage = "https://challenge.isic-archive.com/data/#2018"
    license = "CC BY-NC 4.0"
    citation = ("Codella N, Rotemberg V, Tschandl P, et al. Skin lesion analysis toward melanoma detection 2018: a "
                "challenge hosted by the International Skin Imaging Collaboration (ISIC). arXiv:1902.03368, 2019; and "
                "Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset. Sci Data 5:180161, 2018.")
    fake_counts = {"train": 6, "valid": 2, "test": 2}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        records, failures = [], []
        for part, split in _SPLITS.items():
            truth = at(root, f"ISIC2018_Task1_{part}_GroundTruth")
            r, f = pair_by_name(
                tree, tree.glob(at(root, f"ISIC2018_Task1-2_{part}_Input/ISIC_*.jpg")),
                lambda img: [f"{truth}/{img.rsplit('/', 1)[1][:-4]}_segmentation.png"],
                split=split, mask_glob=f"{truth}/ISIC_*_segmentation.png")
            records += r
            failures += f
        return records, failures

    @staticmethod
    def fake(root: Path, seed: int = 0, n: tuple[int, int, int] = (6, 2, 2),
             hw: tuple[int, int] | None = None) -> Path:
        """``n`` = (training, validation, test) images: JPEG inputs of varying size (or all ``hw``), PNG
        ``_segmentation`` masks, LICENSE/ATTRIBUTION files."""
        import numpy as np

        from ..synthetic import jpeg, png, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "ISIC2018"
        k = 0
        for part, count in zip(_SPLITS, n):
            inp, gt = base / f"ISIC2018_Task1-2_{part}_Input", base / f"ISIC2018_Task1_{part}_GroundTruth"
            for _ in range(count):
                h, w = hw or (int(rng.integers(60, 140)), int(rng.integers(80, 160)))
                img, mask = scene(h, w, rng)
                write(inp / f"ISIC_{k:07d}.jpg", jpeg(img))
                write(gt / f"ISIC_{k:07d}_segmentation.png", png(u8(mask)))
                k += 1
            for d in (inp, gt):
                write(d / "LICENSE.txt", b"CC-BY-NC\n")
                write(d / "ATTRIBUTION.txt", b"ISIC Archive\n")
        return base
