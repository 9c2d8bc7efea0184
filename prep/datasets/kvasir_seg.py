"""Kvasir-SEG colonoscopy polyps: JPEG images and JPEG-compressed masks (thresholded at half range)."""

from __future__ import annotations

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .folder import pair_pattern


@register
class KvasirSEG(Converter):
    name = "kvasir-seg"
    title = "Kvasir-SEG (polyp segmentation)"
    modality = "colonoscopy"
    split_rule = "test"
    marker = "masks/*.jpg"
    layout = "Kvasir-SEG/images/<id>.jpg + Kvasir-SEG/masks/<id>.jpg (JPEG masks, values 0-8 and 247-255); 1000"

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        return pair_pattern(tree, "images/*.jpg", "masks/{name}", root=self.root(tree))
