"""BUSI breast ultrasound: ``<class> (N).png`` with one or more ``_mask``/``_mask_K`` files, OR-merged; the
``normal`` class has empty masks and is kept; the class goes into meta."""

from __future__ import annotations

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .folder import pair_pattern


@register
class BUSI(Converter):
    name = "busi"
    title = "BUSI (Breast Ultrasound Images Dataset)"
    modality = "ultrasound"
    split_rule = "test"
    marker = "benign/benign (*)_mask.png"
    layout = ('Dataset_BUSI_with_GT/{benign,malignant,normal}/"<class> (N).png" + "<class> (N)_mask.png" '
              '(+ "_mask_1.png", ... extra lesions, OR-merged; masks may be RGB/RGBA; normal masks are empty); 780')

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        records, failures = pair_pattern(tree, "*/*.png", "{dir}/{stem}_mask*.png", root=self.root(tree))
        return [Record(r.source_id, r.image, r.masks, info={"class": r.image.split("/")[-2], "lesions": len(r.masks)})
                for r in records], failures
