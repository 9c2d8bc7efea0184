"""Shenzhen chest X-rays with the (unofficial) Stirenko et al. lung masks ``CHNCXR_####_x_mask.png``."""

from __future__ import annotations

from ..tree import SourceTree, stem
from .base import Converter, Failure, Record, at, pair_by_name, register


@register
class Shenzhen(Converter):
    name = "shenzhen"
    title = "Shenzhen CXR set with Stirenko lung masks"
    modality = "x-ray"
    marker = "CXR_png/CHNCXR_*.png"
    layout = ("ChinaSet_AllFiles/CXR_png/CHNCXR_####_{0,1}.png + mask/CHNCXR_####_{0,1}_mask.png "
              "(the mask folder may sit inside or beside ChinaSet_AllFiles)")

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        masks = {stem(f)[: -len("_mask")]: f for f in tree.files
                 if f.rsplit("/", 1)[-1].startswith("CHNCXR_") and f.endswith("_mask.png")}
        images = tree.glob(at(root, "CXR_png/CHNCXR_*.png"))
        records, failures = pair_by_name(
            tree, images, lambda img: [masks[stem(img)]] if stem(img) in masks else [])
        used = {m for r in records for m in r.masks}
        failures += [Failure(stem(m), (m,), "mask without image") for m in sorted(masks.values()) if m not in used]
        records = [Record(r.source_id, r.image, r.masks, info={"tuberculosis": r.source_id.endswith("_1")})
                   for r in records]
        return records, failures
