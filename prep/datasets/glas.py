"""GlaS (MICCAI 2015 Gland Segmentation challenge, Warwick-QU colon histology): BMP tiles with instance-labelled
``_anno.bmp`` maps (0 background, one value per gland), turned into ``mask.png`` (label > 0) and ``inst.png``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..imaging import ConversionError, decode
from ..tree import LayoutError, SourceTree
from .base import Converter, Failure, Loaded, Record, register
from .pairing import pair_pattern

PARTS = {"train": "train", "testA": "test", "testB": "test"}  # file name prefix -> split


@register
class GlaS(Converter):
    name = "glas"
    title = "GlaS (MICCAI 2015 Gland Segmentation challenge, Warwick-QU colon histology)"
    modality = "microscopy"
    split_rule = "official"
    valid_from_train = 0.2  # carved from train, as for DRIVE
    marker = "train_*_anno.bmp"
    layout = ('"Warwick QU Dataset (Released 2016_07_08)"/{train,testA,testB}_N.bmp + {train,testA,testB}_N_anno.bmp '
              "(8-bit gland instance labels, 0 background) + Grade.csv (patient, grade); 85 train, 60 + 20 test")
    domain = "unseen"
    homepage = "https://warwick.ac.uk/fac/cross_fac/tia/data/glascontest/"
    license = "see the official page"
    citation = ("Sirinukunwattana K, Pluim JPW, Chen H, et al. Gland segmentation in colon histology images: the GlaS "
                "challenge contest. Med Image Anal 35:489-502, 2017.")
    fake_counts = {"train": 4, "valid": 1, "test": 3}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        grades = self._grades(tree, root)
        found, failures = pair_pattern(tree, "*.bmp", "{stem}_anno.bmp", root=root)
        records = []
        for r in found:
            part = r.source_id.split("_", 1)[0]
            if part not in PARTS:
                failures.append(Failure(r.source_id, tuple(r.files()), f"not a GlaS part: expected a file name "
                                        f"starting with {', '.join(p + '_' for p in PARTS)}"))
                continue
            row = grades.get(r.source_id, {})
            records.append(Record(r.source_id, r.image, r.masks, split=PARTS[part], group=row.get("patient"),
                                  info={"part": part, **row}))
        return records, failures

    @staticmethod
    def _grades(tree: SourceTree, root: str) -> dict[str, dict[str, str]]:
        """tile -> {patient, grade} from Grade.csv (absent: empty); its header names carry spaces."""
        path = f"{root}/Grade.csv" if root else "Grade.csv"
        if not tree.exists(path):
            return {}
        rows = csv.reader(io.StringIO(tree.read(path).decode("utf-8-sig")))
        header = [h.strip().lower() for h in next(rows, [])]
        if header[:3] != ["name", "patient id", "grade (glas)"]:
            raise LayoutError(f"{path}: expected the columns name, patient ID, grade (GlaS); found {header}")
        return {r[0].strip(): {"patient": r[1].strip(), "grade": r[2].strip()} for r in rows if len(r) >= 3}

    def load(self, blobs: dict[str, bytes], rec: Record) -> Loaded:
        image = decode(blobs[rec.image], rec.image)
        anno = decode(blobs[rec.masks[0]], rec.masks[0])
        if anno.ndim != 2 or anno.dtype != np.uint8 or anno.shape != image.shape[:2]:
            raise ConversionError(f"{rec.masks[0]}: {anno.dtype} {anno.shape}; expected an 8-bit label map of the "
                                  f"image's size {image.shape[:2]}")
        inst = anno.astype(np.uint16)
        glands = int(np.count_nonzero(np.bincount(anno.ravel())[1:]))
        return Loaded(image, inst > 0, inst=inst, info={"instances": glands})

    @staticmethod
    def fake(root: Path, seed: int = 0, n_train: int = 5, n_test_a: int = 2, n_test_b: int = 1) -> Path:
        """RGB BMP tiles of two sizes in the release folder (spaces and brackets in its name), 8-bit grey-palette
        ``_anno.bmp`` instance maps (glands numbered 1..k, one gland label skipped as in re-numbered releases),
        and ``Grade.csv`` with the original's spaced header."""
        import cv2

        from ..synthetic import bmp, scene, write

        rng = np.random.default_rng(seed)
        base = root / "Warwick QU Dataset (Released 2016_07_08)"
        rows = ["name, patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"]
        for part, count in (("train", n_train), ("testA", n_test_a), ("testB", n_test_b)):
            for i in range(1, count + 1):
                h, w = (52, 78) if i % 2 else (43, 57)  # GlaS has 775x522 and 567x430 tiles
                img, _ = scene(h, w, rng, blobs=0)
                anno = np.zeros((h, w), np.uint8)
                for label in (1, 2, 4)[: int(rng.integers(2, 4))]:
                    center = (int(rng.integers(10, w - 10)), int(rng.integers(8, h - 8)))
                    axes = (int(rng.integers(4, 9)), int(rng.integers(3, 7)))
                    cv2.ellipse(anno, center, axes, float(rng.uniform(0, 180)), 0, 360, label, -1)
                img[anno > 0] //= 2
                write(base / f"{part}_{i}.bmp", bmp(img))
                write(base / f"{part}_{i}_anno.bmp", bmp(anno))
                rows.append(f"{part}_{i},{i % 3 + 1},{'benign' if i % 2 else 'malignant'},adenomatous")
        write(base / "Grade.csv", ("\n".join(rows) + "\n").encode())
        return base
