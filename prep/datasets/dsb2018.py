"""DSB-2018 stage1_train nuclei: one PNG per nucleus, OR-merged into the mask and numbered into ``inst.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..imaging import decode, instance_map
from ..tree import SourceTree
from .base import Converter, Failure, Loaded, Record, at, register


@register
class DSB2018(Converter):
    name = "dsb2018"
    title = "2018 Data Science Bowl, stage1_train"
    modality = "microscopy"
    marker = "*/images/*.png"
    layout = "stage1_train/<64-hex id>/images/<id>.png (RGBA) + stage1_train/<id>/masks/<hash>.png (one per nucleus)"
    domain = "source"
    esp_name = "dsb"
    homepage = "https://www.kaggle.com/c/data-science-bowl-2018"
    license = "see the official page (also published as BBBC038)"
    citation = ("Caicedo JC, Goodman A, Karhohs KW, et al. Nucleus segmentation across imaging experiments: the 2018 "
                "Data Science Bowl. Nat Methods 16:1247-1253, 2019.")
    fake_counts = {"train": 6, "valid": 1, "test": 1}

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
        inst = instance_map(hw, len(rec.masks), rec.source_id, "nuclei")
        painted = 0
        for n, (box, fg) in enumerate(self.read_mask_boxes(blobs, rec.masks, hw), start=1):  # nucleus' box only
            painted += int(np.count_nonzero(fg))
            np.copyto(inst[box], np.uint16(n), where=fg)  # a later nucleus wins where two overlap
        mask = inst > 0
        # pixels of each nucleus already taken by earlier ones, summed: what was painted beyond the union
        overlap = painted - int(np.count_nonzero(mask))
        return Loaded(image, mask, inst=inst, info={"instances": len(rec.masks), "overlap_pixels": overlap})

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 8) -> Path:
        """RGBA images (alpha 255) in ``<id>/images/``, one 0/255 PNG per nucleus (nuclei do not overlap)."""
        import hashlib

        import cv2

        from ..synthetic import png, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "stage1_train"
        for i in range(n):
            sid = hashlib.sha256(f"dsb{seed}-{i}".encode()).hexdigest()
            img, _ = scene(64, 80, rng, blobs=0)
            img = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
            taken = np.zeros((64, 80), bool)
            for j in range(int(rng.integers(2, 6))):
                nucleus = np.zeros((64, 80), np.uint8)
                cv2.circle(nucleus, (int(rng.integers(8, 72)), int(rng.integers(8, 56))), int(rng.integers(3, 7)), 1,
                           -1)
                nucleus = nucleus.astype(bool) & ~taken
                taken |= nucleus
                img[nucleus, :3] //= 3
                mid = hashlib.sha256(f"{sid}-{j}".encode()).hexdigest()
                write(base / sid / "masks" / f"{mid}.png", png(u8(nucleus)))
            write(base / sid / "images" / f"{sid}.png", png(img))
        return base
