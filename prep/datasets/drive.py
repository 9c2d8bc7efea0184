"""DRIVE retinal vessels: LZW TIFF images, GIF manual and field-of-view masks, official training/test."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, at, register
from .pairing import pair_by_name


@register
class DRIVE(Converter):
    name = "drive"
    title = "DRIVE (Digital Retinal Images for Vessel Extraction)"
    modality = "fundus"
    split_rule = "official"
    valid_from_train = 0.2  # 16/4 of the 20 training images
    marker = "training/images/*_training.tif"
    layout = ("training/images/NN_training.tif + training/1st_manual/NN_manual1.gif + "
              "training/mask/NN_training_mask.gif (NN 21-40); test/images/NN_test.tif + test/1st_manual/NN_manual1.gif"
              " + test/mask/NN_test_mask.gif (NN 01-20)")
    domain = "source"
    esp_name = "retinal"
    homepage = "https://drive.grand-challenge.org/"
    license = "see the official page"
    citation = ("Staal J, Abramoff MD, Niemeijer M, Viergever MA, van Ginneken B. Ridge-based vessel segmentation in "
                "color images of the retina. IEEE Trans Med Imaging 23(4):501-509, 2004.")
    fake_counts = {"train": 4, "valid": 1, "test": 2}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        records, failures = [], []
        for part, split in (("training", "train"), ("test", "test")):
            base = at(root, part)
            for img in tree.glob(f"{base}/images/*_{part}.tif"):
                sid = img.rsplit("/", 1)[1][:-4]
                nn = sid.split("_")[0]
                r, f = pair_by_name(tree, [img], lambda _: [f"{base}/1st_manual/{nn}_manual1.gif"], split=split)
                fov = f"{base}/mask/{sid}_mask.gif"
                records += [Record(x.source_id, x.image, x.masks, split=split,
                                   extras={"fov": fov} if tree.exists(fov) else {}) for x in r]
                failures += f
        return records, failures

    @staticmethod
    def fake(root: Path, seed: int = 0, n_train: int = 5, n_test: int = 2) -> Path:
        """RGB LZW TIFF images, GIF (mode L, 0/255) vessel and FOV masks, the 21-40 / 01-20 numbering."""
        import numpy as np

        from ..synthetic import gif, scene, tiff_lzw, write

        rng = np.random.default_rng(seed)
        base = root / "DRIVE"
        h, w = 73, 70  # DRIVE's 584x565 aspect, scaled down
        yy, xx = np.mgrid[0:h, 0:w]
        fov = ((yy - h / 2) / (h * 0.46)) ** 2 + ((xx - w / 2) / (w * 0.46)) ** 2 <= 1
        for part, first, count in (("training", 21, n_train), ("test", 1, n_test)):
            for nn in range(first, first + count):
                img, _ = scene(h, w, rng)
                vessels = np.zeros((h, w), bool)
                for _ in range(4):
                    c = int(rng.integers(5, w - 5))
                    vessels[:, c: c + 2] = True
                vessels &= fov
                sid = f"{nn:02d}_{part}"
                write(base / part / "images" / f"{sid}.tif", tiff_lzw(img))
                write(base / part / "1st_manual" / f"{nn:02d}_manual1.gif", gif(vessels))
                write(base / part / "mask" / f"{sid}_mask.gif", gif(fov))
        return base
