"""TNBC nuclei (Naylor et al.): ``Slide_xx/xx_n.png`` RGBA images with ``GT_xx/xx_n.png`` masks."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, at, register
from .pairing import pair_by_name


@register
class TNBC(Converter):
    name = "tnbc"
    title = "TNBC nuclei segmentation (triple-negative breast cancer H&E)"
    modality = "microscopy"
    split_rule = "test"
    marker = "Slide_*/*.png"
    layout = "TNBC_NucleiSegmentation/Slide_01..11/NN_M.png (RGBA) + GT_01..11/NN_M.png (__MACOSX/ ignored); 50"
    domain = "unseen"
    esp_name = "tnbc"
    homepage = "https://zenodo.org/record/1175282"
    license = "see the official page"
    citation = ("Naylor P, Lae M, Reyal F, Walter T. Segmentation of nuclei in histopathology images by deep regression"
                " of the distance map. IEEE Trans Med Imaging 38(2):448-459, 2019.")
    fake_counts = {"test": 6}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)

        def mask_of(img: str) -> list[str]:
            slide, name = img.split("/")[-2:]
            return [at(root, f"GT_{slide[len('Slide_'):]}/{name}")]

        return pair_by_name(tree, tree.glob(at(root, "Slide_*/*.png")), mask_of, mask_glob=at(root, "GT_*/*.png"))

    def split_file_id(self, source_id: str) -> str:
        return f"TNBC_{source_id}"

    @staticmethod
    def fake(root: Path, seed: int = 0, slides: int = 3, per_slide: int = 2) -> Path:
        """``Slide_xx/xx_n.png`` RGBA (alpha 255) H&E tiles, ``GT_xx/xx_n.png`` 0/255 masks, a ``__MACOSX/``
        shadow folder of AppleDouble files."""
        import numpy as np

        from ..synthetic import png, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "TNBC_NucleiSegmentation"
        for s in range(1, slides + 1):
            for k in range(1, per_slide + 1):
                name = f"{s:02d}_{k}.png"
                img, mask = scene(32, 32, rng, blobs=3)
                write(base / f"Slide_{s:02d}" / name, png(np.dstack([img, np.full((32, 32), 255, np.uint8)])))
                write(base / f"GT_{s:02d}" / name, png(u8(mask)))
                write(root / "__MACOSX" / base.name / f"Slide_{s:02d}" / f"._{name}", b"\x00\x05\x16\x07AppleDouble")
        return base
