"""CVPR 2024 "MedSAM on laptop" npz files: ``imgs``, ``gts`` (label maps) and ``spacing``, 2D and 3D.

2D files hold ``imgs`` (H, W, 3) or (H, W) and ``gts`` (H, W): one sample each. 3D files hold ``imgs`` and ``gts``
(D, H, W), already windowed to uint8 by the challenge, cut along axis 0 into slices ``<id>_z0042``; ``spacing`` is
in SimpleITK (x, y, z) order and goes into meta as [slice, row, col]. Files are named ``<Modality>_<dataset>...``
(training files, e.g. ``CT_Abd_FLARE22_Tr_0001.npz``) or ``2DBox_<Modality>_...`` / ``3DBox_<Modality>_...`` (the
challenge's test and demo files): each file's samples get the modality of its prefix (``PREFIX_MODALITY``; one
build may hold all 11), unless ``-o modality=NAME`` gives one for every file. A file without ``gts`` (a test input:
``imgs`` + ``boxes``) is a failure.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from ..imaging import ConversionError, check_finite, check_pixels, to_uint8
from ..tree import LayoutError, SourceTree
from ..volume_io import cut, label_values
from .base import Converter, Failure, Loaded, Record, register
from .options import DatasetName, option
from .volumes import SliceOptions

# the challenge's file name prefixes (the first ``_``-separated part after an optional 2DBox_ / 3DBox_) and their
# modality: all 11 of the CVPR 2024 "MedSAM on laptop" data, with the spellings its files use
PREFIX_MODALITY = {"CT": "ct", "MR": "mr", "PET": "pet", "XRay": "x-ray", "X-Ray": "x-ray", "Xray": "x-ray",
                   "US": "ultrasound", "Mammography": "mammography", "Mammo": "mammography", "OCT": "oct",
                   "Endoscopy": "endoscopy", "Fundus": "fundus", "Dermoscopy": "dermoscopy",
                   "Microscope": "microscopy", "Microscopy": "microscopy"}
_BOX_PREFIX = re.compile(r"^[23]D(Box)?_")


def prefix_modality(file_stem: str) -> str | None:
    """The modality a challenge file name declares (``CT_Abd_...``, ``2DBox_Mammography_demo``), None if none."""
    return PREFIX_MODALITY.get(_BOX_PREFIX.sub("", file_stem).split("_", 1)[0])


def _declared_pixels(npz: Any, key: str) -> tuple[int, ...]:
    """The shape array ``key`` of an npz declares in its ``.npy`` header (nothing unpacked), without a trailing
    channel axis of 2-4."""
    with npz.zip.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape = read(f)[0]
    return shape[:-1] if len(shape) >= 3 and 2 <= shape[-1] <= 4 else shape


@register
class MedSAMNpz(Converter):
    name = "medsam-npz"
    homepage = "https://github.com/bowang-lab/MedSAM"
    license = "see the official page (each source dataset keeps its own licence)"
    citation = "Ma J, He Y, Li F, Han L, You C, Wang B. Segment anything in medical images. Nat Commun 15:654, 2024."
    title = 'CVPR 2024 "MedSAM on laptop" npz files, 2D and 3D, 11 modalities (from the file names)'
    modality = None  # each file's, from its name; or -o modality=
    marker = "*.npz"
    src_relative = True  # its globs are relative to --src
    layout = ("<Modality>_<dataset>_<case>.npz (CT_, MR_, PET_, XRay_, US_, Mammography_, OCT_, Endoscopy_, Fundus_, "
              "Dermoscopy_, Microscopy_; optionally after 2DBox_/3DBox_) at any depth (or -o images=GLOB), each with "
              "imgs (H,W,3)|(H,W) + gts (H,W), or imgs + gts (D,H,W) and spacing (x,y,z)")
    fake_counts = {"train": 18}  # the CT slices
    fake_failures = 0
    fake_options = {"modality": "ct", "images": "CT/*.npz"}  # one modality (the registry's checks), given

    @dataclass(frozen=True, kw_only=True)
    class Options(SliceOptions):
        name: DatasetName = option(DatasetName("medsam-npz"),
                                   help="dataset name in keys and manifest; give each build its own")
        modality: str | None = option(None, help="one modality for every file, overriding the file-name prefixes",
                                      flag="-o modality=NAME")
        images: str | None = option(None, help="glob of the npz files to read (default: every .npz)")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.name, self.modality = self.opts.name, self.opts.modality

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        pattern = self.opts.images
        files = tree.glob(pattern) if pattern else [f for f in tree.files if f.lower().endswith(".npz")]
        if not files:
            raise LayoutError(f"{self.name}: no {pattern or '.npz files'} under {tree.label}; expected {self.layout};"
                              f" found {tree.top_level()}")
        records, failures = [], []
        for f in files:
            sid = PurePosixPath(f).name.rsplit(".", 1)[0]
            declared = prefix_modality(sid)
            if not f.lower().endswith(".npz"):
                failures.append(Failure(sid, (f,), "not an npz file"))
            elif self.modality is None and declared is None:
                failures.append(Failure(sid, (f,), f"the file name {PurePosixPath(f).name} starts with no modality "
                                        f"prefix of the challenge ({'_, '.join(PREFIX_MODALITY)}_, optionally after "
                                        f"2DBox_ or 3DBox_); rename it or give -o modality=NAME"))
            else:
                records.append(Record(sid, f, (), modality=None if self.modality else declared))
        return records, failures

    def samples(self, blobs: dict[str, bytes], rec: Record) -> Iterator[tuple[str, Loaded]]:
        """One sample per 2D file; the slices with foreground of a 3D file."""
        try:
            with np.load(io.BytesIO(blobs[rec.image]), allow_pickle=False) as npz:
                for k in ("imgs", "gts"):
                    if k in npz.files:
                        check_pixels(_declared_pixels(npz, k), f"{rec.image} {k}", "pixels")
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise ConversionError(f"cannot read {rec.image} as npz: {e}") from None
        missing = [k for k in ("imgs", "gts") if k not in arrays]
        if missing:
            test_input = " (a challenge test input: boxes are prompts, not masks)" if "boxes" in arrays else ""
            raise ConversionError(f"{rec.image}: no {' or '.join(missing)} array; found {', '.join(arrays) or 'none'}"
                                  f"{test_input}; expected imgs, gts (label map), spacing")
        check_finite(arrays["imgs"], f"{rec.image} imgs")
        imgs, gts = arrays["imgs"], label_values(arrays["gts"], rec.image)
        info: dict[str, Any] = {}
        if "spacing" in arrays:
            info["npz_spacing"] = [round(float(s), 6) for s in np.ravel(arrays["spacing"])]
        if gts.ndim == 2:
            if imgs.shape[:2] != gts.shape or imgs.ndim not in (2, 3):
                raise ConversionError(f"{rec.image}: 2D gts {gts.shape} but imgs {imgs.shape}; expected imgs (H, W, 3)"
                                      f" or (H, W) of the same height and width")
            yield from cut(rec.source_id, gts[None], lambda z, v: (imgs, {}), letter=None,
                           mode=self.opts.multilabel, min_object_pixels=self.opts.min_object_pixels, info=info)
            return
        if gts.ndim != 3 or imgs.shape != gts.shape:
            raise ConversionError(f"{rec.image}: gts {gts.shape} and imgs {imgs.shape}; expected both (D, H, W) for a "
                                  f"3D file, or gts (H, W) for a 2D one")
        volume, rule = to_uint8(imgs)
        info["intensity"] = {"rule": rule}
        if len(info.get("npz_spacing", ())) == 3:
            info["spacing"] = info["npz_spacing"][::-1]  # (x, y, z) -> [slice, row, col]
        yield from cut(rec.source_id, gts, lambda z, v: (volume[z], {}), letter="z", mode=self.opts.multilabel,
                       min_object_pixels=self.opts.min_object_pixels, info={**info, "slice_axis": "axis0"})

    @staticmethod
    def fake(root: Path, seed: int = 0) -> Path:
        """Two 3D CT npz and two 2D dermoscopy npz in the challenge's file naming (``synthetic3d.make_medsam_npz``)."""
        from ..synthetic3d import make_medsam_npz

        return make_medsam_npz(root, seed=seed)
