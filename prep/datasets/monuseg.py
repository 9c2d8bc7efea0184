"""MoNuSeg nuclei: H&E TIFF tiles with Aperio ImageScope XML polygons, rasterised to a mask and an instance map."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from ..imaging import ConversionError, decode, instance_map
from ..tree import LayoutError, SourceTree, stem
from .base import Converter, Failure, Loaded, Record, register

IMAGE_EXTS = (".tif", ".tiff", ".png")


def rasterise(xml: bytes, hw: tuple[int, int], name: str) -> tuple[np.ndarray, int]:
    """uint16 instance map of the ``<Region>`` polygons of an Aperio XML (numbered in file order; a later
    polygon wins where two overlap) and the number of overlapping pixels."""
    try:
        regions = ET.fromstring(xml).iter("Region")
        polygons = [np.array([[float(v.get("X")), float(v.get("Y"))] for v in r.iter("Vertex")]) for r in regions]
    except (ET.ParseError, TypeError, ValueError) as e:
        raise ConversionError(f"{name}: not an Aperio ImageScope annotation XML ({e})") from None
    polygons = [p for p in polygons if len(p) >= 3]
    if not polygons:
        raise ConversionError(f"{name}: holds no <Region> with 3 or more <Vertex X= Y=>; expected Aperio XML polygons")
    inst = instance_map(hw, len(polygons), name, "polygons")
    overlap = 0
    for n, poly in enumerate(polygons, start=1):
        pts = np.round(poly).astype(np.int32)
        x0, y0 = np.maximum(pts.min(axis=0), 0)
        x1, y1 = np.minimum(pts.max(axis=0) + 1, (hw[1], hw[0]))
        if x1 <= x0 or y1 <= y0:
            continue  # entirely outside the tile
        local = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(local, [pts - (x0, y0)], 1)
        window = inst[y0:y1, x0:x1]
        overlap += int(np.count_nonzero(local.astype(bool) & (window > 0)))
        window[local.astype(bool)] = n
    return inst, overlap


@register
class MoNuSeg(Converter):
    name = "monuseg"
    title = "MoNuSeg 2018 (multi-organ nuclei segmentation)"
    modality = "microscopy"
    split_rule = "test"
    marker = "*.xml"
    layout = ('"MoNuSeg 2018 Training Data"/Tissue Images/TCGA-*.tif + Annotations/TCGA-*.xml; MoNuSegTestData/'
              "TCGA-*.tif + TCGA-*.xml (Aperio polygons); 37 + 14 (--split-rule official keeps training/test)")
    domain = "unseen"
    homepage = "https://monuseg.grand-challenge.org/"
    license = "CC BY-NC-SA 4.0 (see the official page)"
    citation = ("Kumar N, Verma R, Sharma S, Bhargava S, Vahadane A, Sethi A. A dataset and a technique for generalized"
                " nuclear segmentation for computational pathology. IEEE Trans Med Imaging 36(7):1550-1560, 2017.")
    fake_counts = {"test": 5}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        xmls = [f for f in tree.files if f.lower().endswith(".xml")]
        if not xmls:
            raise LayoutError(f"{self.name}: expected Aperio annotation XML files (Annotations/*.xml or beside the "
                              f"tiles) under {tree.label}; found {tree.top_level()}")
        records, failures, used = [], [], set()
        for img in (f for f in tree.files if f.lower().endswith(IMAGE_EXTS)):
            folder = PurePosixPath(img).parent
            candidates = [str(folder / f"{stem(img)}.xml"), str(folder.parent / "Annotations" / f"{stem(img)}.xml")]
            xml = next((c for c in candidates if tree.exists(c)), None)
            if xml is None:
                failures.append(Failure(stem(img), (img,), f"image without mask: expected {' or '.join(candidates)}"))
                continue
            used.add(xml)
            split = "test" if "test" in img.lower() else "train"
            records.append(Record(stem(img), img, (xml,), split=split, info={"part": split}))
        failures += [Failure(stem(x), (x,), "mask without image") for x in xmls if x not in used]
        return records, failures

    def load(self, blobs: dict[str, bytes], rec: Record) -> Loaded:
        image = decode(blobs[rec.image], rec.image)
        inst, overlap = rasterise(blobs[rec.masks[0]], image.shape[:2], rec.masks[0])
        visible = int(np.count_nonzero(np.bincount(inst.ravel())[1:]))  # polygons not wholly covered by later ones
        return Loaded(image, inst > 0, inst=inst,
                      info={"instances": visible, "overlap_pixels": overlap, "mask_from": "aperio-xml"})

    @staticmethod
    def fake(root: Path, seed: int = 0, n_train: int = 3, n_test: int = 2) -> Path:
        """``MoNuSeg 2018 Training Data/Tissue Images/TCGA-*.tif`` + ``Annotations/TCGA-*.xml`` and
        ``MoNuSegTestData/TCGA-*.{tif,xml}``; four nuclei per tile, the last two overlapping; ``__MACOSX/``."""
        from ..synthetic import aperio_xml, nucleus, scene, tiff_lzw, write

        rng = np.random.default_rng(seed)
        base = root / "MoNuSeg"
        for i in range(n_train + n_test):
            sid = f"TCGA-{i:02d}-{seed:04d}-01Z-00-DX1"
            img, _ = scene(64, 64, rng, blobs=0)
            polys = [nucleus(14.3, 14.6, 5.2), nucleus(46.0, 16.0, 4.0), nucleus(20.0, 46.0, 6.0),
                     nucleus(27.0, 46.0, 6.0)]
            if i < n_train:
                folder = base / "MoNuSeg 2018 Training Data"
                write(folder / "Tissue Images" / f"{sid}.tif", tiff_lzw(img))
                write(folder / "Annotations" / f"{sid}.xml", aperio_xml(polys))
            else:
                write(base / "MoNuSegTestData" / f"{sid}.tif", tiff_lzw(img))
                write(base / "MoNuSegTestData" / f"{sid}.xml", aperio_xml(polys))
        write(base / "__MACOSX" / "MoNuSegTestData" / "._x.tif", b"\x00\x05\x16\x07")
        return base
