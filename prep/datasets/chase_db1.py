"""CHASE_DB1 retinal vessels: flat folder, ``Image_NN{L,R}.jpg`` with two annotators' PNG vessel maps."""

from __future__ import annotations

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .folder import pair_pattern

ANNOTATORS = ("1stHO", "2ndHO")


@register
class CHASEDB1(Converter):
    name = "chase-db1"
    title = "CHASE_DB1 (Child Heart and Health Study retinal images)"
    modality = "fundus"
    split_rule = "test"
    marker = "Image_*.jpg"
    layout = "CHASEDB1/Image_NN{L,R}.jpg + Image_NN{L,R}_1stHO.png + Image_NN{L,R}_2ndHO.png (28 images)"
    options = {"annotator": "1stHO"}  # 1stHO (first human observer) or 2ndHO

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        who = self.opts["annotator"]
        if who not in ANNOTATORS:
            raise ValueError(f"-o annotator={who}: expected one of {', '.join(ANNOTATORS)}")
        records, failures = pair_pattern(tree, "Image_*.jpg", f"{{stem}}_{who}.png", root=self.root(tree))
        return [Record(r.source_id, r.image, r.masks, info={"annotator": who}) for r in records], failures
