"""UDIAT Dataset B breast ultrasound: ``original/`` and ``GT/`` PNGs."""

from __future__ import annotations

from ..tree import SourceTree
from .base import Converter, Failure, Record, at, pair_by_name, register


@register
class UDIAT(Converter):
    name = "udiat"
    title = "UDIAT Dataset B (breast ultrasound)"
    modality = "ultrasound"
    marker = "original/*.png"
    layout = "Dataset_B (or BUS_Dataset_B, BUS)/original/000001.png..000163.png + GT/000001.png..."

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        return pair_by_name(tree, tree.glob(at(root, "original/*.png")),
                            lambda img: [at(root, f"GT/{img.rsplit('/', 1)[1]}")], mask_glob=at(root, "GT/*.png"))

    def split_file_id(self, source_id: str) -> str:
        return f"ultra_{source_id}"
