"""CVC-ColonDB, CVC-300 and ETIS-Larib as distributed in the common polyp-benchmark mirrors (PraNet's TestDataset
and alikes): ``images/N.png`` + ``masks/N.png``, masks often RGB and not exactly binary (thresholded)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ..imaging import ConversionError, decode, mask_plane
from ..tree import LayoutError, SourceTree
from .base import Converter, Failure, Loaded, Record, at, register
from .pairing import pair_pattern

THRESHOLD = 128  # the benchmarks' own rule (PraNet evaluation: gt > 128 after reading as grey)


class ColonMirror(Converter):
    """One polyp set of the mirrors; ``folders`` are the names it has there, preferred when --src holds several."""

    modality = "colonoscopy"
    split_rule = "test"
    marker = "images/*"
    folders: ClassVar[tuple[str, ...]]
    domain = "unseen"
    homepage = "https://github.com/DengPingFan/PraNet"  # the mirrors' layout: PraNet's TestDataset
    license = "see the official page"
    fake_counts = {"test": 5}

    def root(self, tree: SourceTree) -> str:
        for folder in self.folders:
            try:
                return at(tree.find_root(f"{folder}/images/*", self.name), folder)
            except LayoutError:
                continue
        return tree.find_root(self.marker, self.name)

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        return pair_pattern(tree, "images/*", "masks/{stem}.*", root=self.root(tree))

    def load(self, blobs: dict[str, bytes], rec: Record) -> Loaded:
        """The mirrors' masks were resized with interpolation (grey ramps along the border, often RGB): threshold
        the brightest channel at 128 instead of insisting on a binary file."""
        image = decode(blobs[rec.image], rec.image)
        mask = np.zeros(image.shape[:2], bool)
        for path in rec.masks:
            m = mask_plane(decode(blobs[path], path, indexed=True), path)
            if m.dtype != np.uint8 or m.shape != mask.shape:
                raise ConversionError(f"{path}: mask is {m.shape[1]}x{m.shape[0]} {m.dtype}; expected 8-bit "
                                      f"{mask.shape[1]}x{mask.shape[0]} like its image")
            mask |= m >= THRESHOLD
        return Loaded(image, mask, info={"mask_threshold": THRESHOLD})

    @classmethod
    def fake(cls, root: Path, seed: int = 0, n: int = 5) -> Path:
        """``<folder>/images/N.png`` and RGB ``masks/N.png`` whose edges were smoothed by resizing (values between
        0 and 255 along the border), in the set's first mirror folder name."""
        import cv2
        import numpy as np

        from ..synthetic import png, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / cls.folders[0]
        for i in range(1, n + 1):
            img, mask = scene(40, 52, rng)
            soft = cv2.GaussianBlur(u8(mask), (3, 3), 0)
            write(base / "images" / f"{i}.png", png(img))
            write(base / "masks" / f"{i}.png", png(np.repeat(soft[..., None], 3, axis=2)))
        return base


@register
class CVCColonDB(ColonMirror):
    name = "cvc-colondb"
    title = "CVC-ColonDB (mirror layout)"
    folders = ("CVC-ColonDB", "ColonDB")
    esp_name = "colon"
    layout = "CVC-ColonDB/images/N.png + CVC-ColonDB/masks/N.png (RGB, not exactly binary masks); 380"
    citation = ("Bernal J, Sanchez J, Vilarino F. Towards automatic polyp detection with a polyp appearance model. "
                "Pattern Recognit 45(9):3166-3182, 2012.")

    def split_file_id(self, source_id: str) -> str:
        return f"colondb_{source_id}" if source_id.isdigit() else source_id


@register
class CVC300(ColonMirror):
    name = "cvc-300"
    title = "CVC-300 (EndoScene test set, mirror layout)"
    folders = ("CVC-300", "EndoScene")
    layout = "CVC-300/images/N.png + CVC-300/masks/N.png; 60"
    citation = ("Vazquez D, Bernal J, Sanchez FJ, et al. A benchmark for endoluminal scene segmentation of colonoscopy "
                "images. J Healthc Eng 2017:4037190, 2017.")


@register
class ETISLarib(ColonMirror):
    name = "etis-larib"
    title = "ETIS-LaribPolypDB (mirror layout)"
    folders = ("ETIS-LaribPolypDB", "ETIS-Larib", "ETIS")
    layout = "ETIS-LaribPolypDB/images/N.png + ETIS-LaribPolypDB/masks/N.png; 196"
    homepage = "https://polyp.grand-challenge.org/EtisLarib/"
    citation = ("Silva J, Histace A, Romain O, Dray X, Granado B. Toward embedded detection of polyps in WCE images for"
                " early diagnosis of colorectal cancer. Int J Comput Assist Radiol Surg 9(2):283-293, 2014.")
