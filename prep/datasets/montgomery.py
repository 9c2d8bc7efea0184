"""Montgomery County chest X-rays: lung masks given as separate left and right files, OR-merged."""

from __future__ import annotations

from ..tree import SourceTree, stem
from .base import Converter, Failure, Record, at, pair_by_name, register


@register
class Montgomery(Converter):
    name = "montgomery"
    title = "Montgomery County CXR set"
    modality = "x-ray"
    marker = "CXR_png/MCUCXR_*.png"
    layout = "MontgomerySet/CXR_png/MCUCXR_####_{0,1}.png + ManualMask/{leftMask,rightMask}/MCUCXR_####_{0,1}.png"

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        images = tree.glob(at(root, "CXR_png/MCUCXR_*.png"))

        def masks(img: str) -> list[str]:
            name = img.rsplit("/", 1)[1]
            return [at(root, f"ManualMask/{side}/{name}") for side in ("leftMask", "rightMask")]

        records, failures = pair_by_name(tree, images, masks)
        records = [Record(r.source_id, r.image, r.masks, info={"tuberculosis": stem(r.image).endswith("_1")})
                   for r in records]
        return records, failures
