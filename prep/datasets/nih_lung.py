"""NIH chest X-rays with lung masks as used by XLSor (100 images): an image folder and a mask folder."""

from __future__ import annotations

import re

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .folder import pair_pattern


@register
class NIHLung(Converter):
    name = "nih-lung"
    title = "NIH chest X-ray lung masks (XLSor test set)"
    modality = "x-ray"
    split_rule = "test"
    marker = "images/*"
    layout = ("<images>/<id>.png + <masks>/<id>.png or <id>_mask.png; folders set with --images/--masks "
              "(default images/ and masks/); 100")
    options = {"images": "images", "masks": "masks"}  # image and mask folders below the dataset root

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        images, masks = (str(self.opts[k]).strip("/") for k in ("images", "masks"))
        root = tree.find_root(f"{images}/*", self.name)
        return pair_pattern(tree, f"{images}/*", (f"{masks}/{{stem}}.*", f"{masks}/{{stem}}_mask.*"), root=root)

    def split_file_id(self, source_id: str) -> str:
        """The authors renamed the set NIH_0001..NIH_0100; numbered files map to that form."""
        m = re.fullmatch(r"(?:NIH_)?0*(\d+)", source_id)
        return f"NIH_{int(m.group(1)):04d}" if m else source_id
