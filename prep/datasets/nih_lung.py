"""NIH chest X-rays with lung masks as used by XLSor (100 images): an image folder and a mask folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .pairing import pair_pattern
from .options import option


@register
class NIHLung(Converter):
    name = "nih-lung"
    title = "NIH chest X-ray lung masks (XLSor test set)"
    modality = "x-ray"
    split_rule = "test"
    marker = "images/*"
    layout = ("<images>/<id>.png + <masks>/<id>.png or <id>_mask.png; folders set with --images/--masks "
              "(default images/ and masks/); 100")
    domain = "unseen"
    esp_name = "nih"
    homepage = "https://github.com/rsummers11/CADLab/tree/master/Lung_Segmentation_XLSor"
    license = "see the official page"
    citation = ("Tang YB, Tang YX, Xiao J, Summers RM. XLSor: a robust and accurate lung segmentor on chest X-rays "
                "using criss-cross attention and customized radiorealistic abnormalities generation. MIDL 2019, PMLR "
                "102:457-467.")
    fake_counts = {"test": 5}

    @dataclass(frozen=True)
    class Options:
        images: str = option("images", help="image folder below the dataset root", flag="--images")
        masks: str = option("masks", help="mask folder below the dataset root", flag="--masks")

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        images, masks = self.opts.images.strip("/"), self.opts.masks.strip("/")
        root = tree.find_root(f"{images}/*", self.name)
        return pair_pattern(tree, f"{images}/*", (f"{masks}/{{stem}}.*", f"{masks}/{{stem}}_mask.*"), root=root)

    def split_file_id(self, source_id: str) -> str:
        """The authors renamed the set NIH_0001..NIH_0100; numbered files map to that form."""
        m = re.fullmatch(r"(?:NIH_)?0*(\d+)", source_id)
        return f"NIH_{int(m.group(1)):04d}" if m else source_id

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 5) -> Path:
        """Grey PNG X-rays ``images/NIH_0001.png`` and 0/255 ``masks/NIH_0001.png``."""
        import numpy as np

        from ..synthetic import png, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "NIH"
        for i in range(1, n + 1):
            img, _ = scene(64, 64, rng)
            lungs = np.zeros((64, 64), bool)
            lungs[12:54, 8:28] = lungs[12:54, 36:56] = True
            write(base / "images" / f"NIH_{i:04d}.png", png(img[..., 0]))
            write(base / "masks" / f"NIH_{i:04d}.png", png(u8(lungs)))
        return base
