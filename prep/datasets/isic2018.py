"""ISIC-2018 Task 1: dermoscopy lesion segmentation, official 2594/100/1000 split."""

from __future__ import annotations

from ..tree import SourceTree
from .base import Converter, Failure, Record, at, pair_by_name, register

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
