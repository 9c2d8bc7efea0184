"""HRF (High-Resolution Fundus): ``.jpg``/``.JPG`` images, TIFF vessel and field-of-view masks."""

from __future__ import annotations

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .folder import pair_pattern

CONDITIONS = {"h": "healthy", "g": "glaucoma", "dr": "diabetic retinopathy"}


@register
class HRF(Converter):
    name = "hrf"
    title = "HRF (High-Resolution Fundus image database)"
    modality = "fundus"
    split_rule = "test"
    marker = "manual1/*.tif"
    layout = "images/NN_{h,g,dr}.{jpg|JPG} + manual1/NN_x.tif + mask/NN_x_mask.tif (field of view); 45 images"

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        records, failures = pair_pattern(tree, "images/*.jpg", "manual1/{stem}.tif", root=self.root(tree),
                                         extras={"fov": "mask/{stem}_mask.tif"}, ignore_case=True)
        return [Record(r.source_id, r.image, r.masks, extras=r.extras,
                       info={"condition": CONDITIONS.get(r.source_id.rsplit("_", 1)[-1].lower(), "unknown")})
                for r in records], failures
