"""DRIVE retinal vessels: LZW TIFF images, GIF manual and field-of-view masks, official training/test."""

from __future__ import annotations

from ..tree import SourceTree
from .base import Converter, Failure, Record, at, pair_by_name, register


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
