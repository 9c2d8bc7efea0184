"""TNBC nuclei (Naylor et al.): ``Slide_xx/xx_n.png`` RGBA images with ``GT_xx/xx_n.png`` masks."""

from __future__ import annotations

from ..tree import SourceTree
from .base import Converter, Failure, Record, at, pair_by_name, register


@register
class TNBC(Converter):
    name = "tnbc"
    title = "TNBC nuclei segmentation (triple-negative breast cancer H&E)"
    modality = "microscopy"
    split_rule = "test"
    marker = "Slide_*/*.png"
    layout = "TNBC_NucleiSegmentation/Slide_01..11/NN_M.png (RGBA) + GT_01..11/NN_M.png (__MACOSX/ ignored); 50"

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)

        def mask_of(img: str) -> list[str]:
            slide, name = img.split("/")[-2:]
            return [at(root, f"GT_{slide[len('Slide_'):]}/{name}")]

        return pair_by_name(tree, tree.glob(at(root, "Slide_*/*.png")), mask_of, mask_glob=at(root, "GT_*/*.png"))

    def split_file_id(self, source_id: str) -> str:
        return f"TNBC_{source_id}"
