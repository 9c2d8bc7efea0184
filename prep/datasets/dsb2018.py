"""DSB-2018 stage1_train nuclei: one PNG per nucleus, OR-merged into the mask and numbered into ``inst.png``."""

from __future__ import annotations

import numpy as np

from ..imaging import ConversionError, decode
from ..tree import SourceTree
from .base import Converter, Failure, Loaded, Record, at, register


@register
class DSB2018(Converter):
    name = "dsb2018"
    title = "2018 Data Science Bowl, stage1_train"
    modality = "microscopy"
    marker = "*/images/*.png"
    layout = "stage1_train/<64-hex id>/images/<id>.png (RGBA) + stage1_train/<id>/masks/<hash>.png (one per nucleus)"

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        records, failures = [], []
        for img in tree.glob(at(root, "*/images/*.png")):
            sid = img.split("/")[-3]
            masks = tuple(tree.glob(at(root, f"{sid}/masks/*.png")))
            if not masks:
                failures.append(Failure(sid, (img,), f"image without mask: {at(root, sid)}/masks/ holds no PNG"))
                continue
            records.append(Record(sid, img, masks))
        return records, failures

    def load(self, blobs: dict[str, bytes], rec: Record) -> Loaded:
        image = decode(blobs[rec.image], rec.image)
        hw = image.shape[:2]
        if len(rec.masks) > np.iinfo(np.uint16).max:
            raise ConversionError(f"{rec.source_id}: {len(rec.masks)} nuclei do not fit a uint16 instance map")
        inst = np.zeros(hw, np.uint16)
        overlap = 0
        for n, path in enumerate(rec.masks, start=1):
            m = self.read_mask(blobs, path, hw)
            overlap += int(np.count_nonzero(m & (inst > 0)))
            inst[m] = n
        return Loaded(image, inst > 0, inst=inst, info={"instances": len(rec.masks), "overlap_pixels": overlap})
