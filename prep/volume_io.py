"""Volume I/O: read NIfTI / MHA / NRRD / DICOM series from bytes, check grids, reorient to RAS, cut 2D slices.

Every reader returns a :class:`Volume`: the voxel array in index order (i, j, k) and the 4x4 affine from voxel
index to RAS millimetres. SimpleITK's arrays come in (z, y, x) = (k, j, i) order and its physical space is LPS;
both are converted here, so nibabel and SimpleITK give identical volumes. :func:`canonical` reorders (permutes and
flips, never resamples) the voxels to the closest RAS+ orientation, so the same anatomy gives the same slices
whatever the voxel order of the file.

2D slices are shown the radiological way: axial slices with anterior up and the patient's right on the image's
left; coronal slices superior up, right on the left; sagittal slices superior up, anterior on the left.
"""

from __future__ import annotations

import io
import math
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from .datasets.base import Loaded
from .imaging import ConversionError, check_finite, check_pixels, gunzip, gunzip_head

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = NIFTI_SUFFIXES + (".mha", ".nrrd")  # single-file formats; DICOM series are folders of .dcm
READERS = ("auto", "nibabel", "sitk")

# slicing axis -> (letter used in sample ids, RAS axis sliced, transpose giving (slice, row, col))
AXES: dict[str, tuple[str, int, tuple[int, int, int]]] = {
    "axial": ("z", 2, (2, 1, 0)),
    "coronal": ("y", 1, (1, 2, 0)),
    "sagittal": ("x", 0, (0, 2, 1)),
}
AXIS_ALIASES = {"z": "axial", "y": "coronal", "x": "sagittal"}

# CT windows (level, width) in HU
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40, 400),
    "abdomen": (50, 400),
    "liver": (30, 150),
    "mediastinum": (50, 350),
    "lung": (-600, 1500),
    "bone": (400, 1800),
    "brain": (40, 80),
}
DEFAULT_PRESET = "soft-tissue"

# grids are equal when spacing and origin agree to this fraction of a voxel and directions to this cosine error
GRID_TOLERANCE = 1e-3


# ------------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Grid:
    """Voxel grid of a volume in RAS millimetres."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]  # rows of the 3x3 matrix whose columns are the axis directions

    def matches(self, other: "Grid", tol: float = GRID_TOLERANCE) -> bool:
        """Same shape, and spacing, origin and direction equal within ``tol`` (of a voxel for lengths)."""
        if self.shape != other.shape:
            return False
        sp, osp = np.array(self.spacing), np.array(other.spacing)
        vox = float(min(sp.min(), osp.min()))
        return bool(np.allclose(sp, osp, rtol=tol, atol=0) and np.allclose(self.origin, other.origin, atol=tol * vox)
                    and np.allclose(self.direction, other.direction, atol=tol))

    def describe(self) -> str:
        def f(v: tuple[float, ...]) -> str:
            return "(" + ", ".join(f"{x + 0.0:.6g}" for x in v) + ")"  # + 0.0: no '-0'

        return (f"shape {'x'.join(map(str, self.shape))}, spacing {f(self.spacing)} mm, origin {f(self.origin)} mm, "
                f"direction {' '.join(f(r) for r in self.direction)} (RAS)")


@dataclass
class Volume:
    """Voxels in index order (i, j, k) and the voxel-to-RAS-mm affine."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def axcodes(self) -> str:
        """Orientation of the voxel axes, e.g. 'LPS' (i towards left, j posterior, k superior)."""
        from nibabel.orientations import aff2axcodes

        return "".join(aff2axcodes(self.affine))

    @property
    def grid(self) -> Grid:
        m = self.affine[:3, :3]
        spacing = np.sqrt((m ** 2).sum(axis=0))
        d = m / spacing
        return Grid(tuple(int(s) for s in self.data.shape), tuple(float(s) for s in spacing),
                    tuple(float(x) for x in self.affine[:3, 3]), tuple(tuple(float(x) for x in r) for r in d))


def volume_suffix(path: str) -> str | None:
    """The volume format suffix of a file name ('.nii.gz', '.mha', ...) or None."""
    low = path.lower()
    return next((s for s in sorted(SITK_SUFFIXES, key=len, reverse=True) if low.endswith(s)), None)


def _check_channel(channels: int, channel: int | None, name: str) -> int:
    """``channel`` of a volume of ``channels`` channels; ConversionError when it is out of range, or None (a label
    volume, whose channel is never guessed)."""
    if channel is None:
        raise ConversionError(f"{name}: a label volume of {channels} channels (4th dimension); medprep does not pick "
                              f"one: choose it with -o label_channel=N (0..{channels - 1})")
    if not 0 <= channel < channels:
        raise ConversionError(f"{name}: has {channels} channels (4th dimension); channel {channel} is out of range "
                              f"(-o channel for images, -o label_channel for labels: 0..{channels - 1})")
    return channel


def _select(arr: np.ndarray, channel: int | None, name: str) -> np.ndarray:
    """(i, j, k) from (i, j, k), (i, j, k, c) or (i, j, k, 1, c)-shaped NIfTI data (``channel`` None: refused
    unless 3D)."""
    if arr.ndim == 5 and arr.shape[3] == 1:  # NIfTI vector data: (i, j, k, 1, c)
        arr = arr[:, :, :, 0]
    if arr.ndim == 4:
        arr = arr[:, :, :, _check_channel(arr.shape[3], channel, name)]
    if arr.ndim != 3:
        raise ConversionError(f"{name}: expected a 3D volume (or 4D with channels), found shape {arr.shape}")
    return arr


NIFTI_HEADER_BYTES = 540  # a NIfTI-2 header; NIfTI-1's is 348
NIFTI_EXTENSIONS_MAX = 64 << 20  # header extensions (TotalSegmentator's label names, DICOM tags) are a few KiB


def _vox_offset(head: bytes) -> int:
    """Where a NIfTI file's voxels start (its header and extensions end), read from the first
    ``NIFTI_HEADER_BYTES`` bytes: NIfTI-1 (sizeof_hdr 348) keeps it as a float32 at byte 108, NIfTI-2 (540) as an
    int64 at byte 168, in the header's byte order. 0 when the header is neither (its parser then says why)."""
    for order in "<>":
        if len(head) >= 112 and struct.unpack(f"{order}i", head[:4])[0] == 348:
            offset = struct.unpack(f"{order}f", head[108:112])[0]
            return int(offset) if np.isfinite(offset) and offset > 0 else 0
        if len(head) >= 176 and struct.unpack(f"{order}i", head[:4])[0] == 540:
            return max(0, struct.unpack(f"{order}q", head[168:176])[0])
    return 0


def _nifti_head(data: bytes, name: str, gz: bool) -> bytes:
    """The bytes of a NIfTI file's header and its extensions (up to ``vox_offset``), unpacking no more of a
    ``.nii.gz`` than those; ConversionError for extensions over ``NIFTI_EXTENSIONS_MAX``."""
    def first(n: int) -> bytes:
        return gunzip_head(data, name, n) if gz else data[:n]

    head = first(NIFTI_HEADER_BYTES)
    end = _vox_offset(head)
    if end <= NIFTI_HEADER_BYTES:
        return head
    if end > NIFTI_EXTENSIONS_MAX:
        raise ConversionError(f"{name}: its header says the voxels start at byte {end} (vox_offset), after more than "
                              f"{NIFTI_EXTENSIONS_MAX >> 20} MiB of header extensions; not read (a damaged header?)")
    return first(end)


def _nifti_header(head: bytes, name: str) -> Any:
    """The NIfTI-1 or NIfTI-2 header, with its extensions, at the start of ``head`` (``_nifti_head``)."""
    import nibabel as nib

    errors = []
    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            return cls.from_fileobj(io.BytesIO(head), check=True)
        except Exception as e:  # nibabel raises several types for a wrong header
            errors.append(f"{cls.__name__}: {e}")
    raise ConversionError(f"cannot read {name} as NIfTI ({'; '.join(errors)})")


def read_nibabel(data: bytes, name: str, channel: int | None = 0) -> Volume:
    """A NIfTI-1/2 volume (``.nii`` or ``.nii.gz``) from its bytes, scaled by scl_slope/inter. The header is read
    first: a volume over --max-pixels voxels is refused, and a ``.nii.gz`` is unpacked only up to the size its
    header declares."""
    import nibabel as nib

    gz = name.lower().endswith(".gz")
    header = _nifti_header(_nifti_head(data, name, gz), name)
    shape = header.get_data_shape()
    check_pixels(shape, name, "voxels")
    if gz:
        declared = int(header["vox_offset"]) + int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
        data = gunzip(data, name, declared + (1 << 20))  # 1 MiB of slack for trailing bytes
    errors = []
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            img = cls.from_bytes(data)
            break
        except Exception as e:  # nibabel raises several types for a wrong header
            errors.append(f"{cls.__name__}: {e}")
    else:
        raise ConversionError(f"cannot read {name} as NIfTI ({'; '.join(errors)})")
    return Volume(_select(np.asanyarray(img.dataobj), channel, name), np.asarray(img.affine, np.float64))


def _sitk_volume(img: Any, name: str, channel: int | None) -> Volume:
    """SimpleITK image (LPS, arrays z,y,x) -> Volume (RAS, arrays i,j,k)."""
    import SimpleITK as sitk

    if img.GetDimension() == 4:
        size = list(img.GetSize())
        img = sitk.Extract(img, size[:3] + [0], [0, 0, 0, _check_channel(size[3], channel, name)])
    if img.GetDimension() != 3:
        raise ConversionError(f"{name}: expected a 3D volume, found {img.GetDimension()}D")
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = arr[..., _check_channel(img.GetNumberOfComponentsPerPixel(), channel, name)]
    d = np.array(img.GetDirection(), np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = d * np.array(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    affine[:2] *= -1  # LPS -> RAS
    return Volume(arr.transpose(2, 1, 0), affine)


def read_sitk(files: dict[str, bytes], name: str, channel: int | None = 0) -> Volume:
    """A volume read by SimpleITK from the bytes of its files: one NIfTI/MHA/NRRD file, or the ``.dcm`` files of
    one DICOM series (``name`` is then the series folder). Files go to a temporary folder that is removed after."""
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory(prefix="medprep-vol-") as tmp:
        paths = []
        for i, (path, blob) in enumerate(sorted(files.items())):
            p = Path(tmp) / f"{i:06d}_{PurePosixPath(path).name}"
            p.write_bytes(blob)
            paths.append(str(p))
        try:
            if len(files) == 1 and volume_suffix(name):
                check_pixels(_declared_size(paths[0]), name, "voxels")
                img = sitk.ReadImage(paths[0])
            else:
                series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(tmp)
                if len(series) != 1:
                    raise ConversionError(f"{name}: expected one DICOM series in the folder, found {len(series)}"
                                          f"{' (' + ', '.join(series) + ')' if series else ''}")
                slices = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(tmp, series[0])
                check_pixels((*_declared_size(slices[0])[:2], len(slices)), name, "voxels")
                _check_slice_spacing(slices, name)
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(slices)
                img = reader.Execute()
        except RuntimeError as e:
            raise ConversionError(f"SimpleITK cannot read {name}: {str(e).strip().splitlines()[-1]}") from None
    return _sitk_volume(img, name, channel)


SLICE_SPACING_TOLERANCE = 0.01  # of the series' usual slice step: scanners round positions to ~1e-3 mm


def _check_slice_spacing(slices: list[str], name: str) -> None:
    """Raise ConversionError when the slices of a DICOM series (files in position order, as GDCM sorts them) are not
    evenly spaced along their normal: SimpleITK would stack them with an averaged spacing (a missing slice makes
    every distance below it wrong). Series whose files lack ImagePositionPatient / ImageOrientationPatient are left
    to GDCM's own ordering."""
    import SimpleITK as sitk

    positions = []
    normal = None
    for path in slices:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            return
        try:
            ipp = np.array([float(x) for x in reader.GetMetaData("0020|0032").split("\\")])
            if normal is None:
                iop = np.array([float(x) for x in reader.GetMetaData("0020|0037").split("\\")])
                normal = np.cross(iop[:3], iop[3:6])
        except ValueError:
            return
        positions.append(float(ipp @ normal))
    if len(positions) < 3:
        return
    steps = np.diff(positions)
    usual = float(np.median(np.abs(steps)))
    off = np.flatnonzero(np.abs(np.abs(steps) - usual) > SLICE_SPACING_TOLERANCE * usual)
    if usual == 0 or off.size:
        i = int(off[0]) if off.size else 0
        a, b = (PurePosixPath(slices[j]).name.split("_", 1)[1] for j in (i, i + 1))
        raise ConversionError(f"{name}: the DICOM slices are not evenly spaced: {a} and {b} lie "
                              f"{abs(steps[i]):.4g} mm apart where the series' step is {usual:.4g} mm (a missing or "
                              f"duplicate slice, {off.size} gap(s) in all); medprep does not resample: add the missing "
                              f"file, or resample the series to even spacing first")


def _declared_size(path: str) -> tuple[int, ...]:
    """The image size a file's header declares (SimpleITK reads the header only)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return tuple(reader.GetSize())


def read_volume(files: dict[str, bytes], name: str, reader: str = "auto", channel: int | None = 0) -> Volume:
    """Read one volume; ``reader`` 'auto' uses nibabel for NIfTI and SimpleITK for everything else. ``channel``: the
    one of a 4D volume to read; None (label volumes without -o label_channel) refuses a 4D volume."""
    nifti = len(files) == 1 and name.lower().endswith(NIFTI_SUFFIXES)
    if reader == "nibabel" or (reader == "auto" and nifti):
        if not nifti:
            raise ConversionError(f"{name}: -o reader=nibabel reads NIfTI (.nii, .nii.gz) only; use reader=sitk")
        vol = read_nibabel(next(iter(files.values())), name, channel)
    else:
        vol = read_sitk(files, name, channel)
    check_finite(vol.data, name, "voxel")
    return vol


def check_grids(image: Volume, label: Volume, image_name: str, label_name: str) -> None:
    """Raise ConversionError naming both grids when the label volume is not on the image's voxel grid. Compare
    :func:`canonical` volumes: a label storing the same voxels in another axis order is on the same grid."""
    gi, gl = image.grid, label.grid
    if not gi.matches(gl):
        raise ConversionError(f"label grid differs from image grid (not resampled): image {image_name}: "
                              f"{gi.describe()}; label {label_name}: {gl.describe()}")


def label_values(arr: np.ndarray, name: str) -> np.ndarray:
    """Integer label volume; float labels must hold whole numbers."""
    if arr.dtype.kind in "iub":
        return arr
    check_finite(arr, name, "label voxel")
    r = np.rint(arr)
    if not np.array_equal(r, arr):
        raise ConversionError(f"{name}: label volume holds non-integer values; expected integer labels (0 = "
                              f"background)")
    return r.astype(np.int32)


# --------------------------------------------------------------------------------------------------- geometry


def canonical(vol: Volume) -> Volume:
    """The same voxels permuted/flipped to the closest RAS+ orientation (no resampling)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(vol.affine)
    data = apply_orientation(vol.data, ornt)
    return Volume(data, vol.affine @ inv_ornt_aff(ornt, vol.data.shape))


def axis_name(axis: str) -> str:
    """'axial' | 'coronal' | 'sagittal' (or z/y/x) -> the canonical name."""
    a = AXIS_ALIASES.get(axis, axis)
    if a not in AXES:
        raise ValueError(f"-o axis={axis!r}: expected axial, coronal, sagittal (or z, y, x)")
    return a


def stack(vol: Volume, axis: str) -> tuple[np.ndarray, list[float]]:
    """A RAS volume as a (slice, row, col) view in display orientation and its spacing [slice, row, col] mm."""
    _, _, order = AXES[axis]
    spacing = vol.grid.spacing
    return vol.data.transpose(order)[:, ::-1, ::-1], [round(spacing[a], 6) for a in order]


# -------------------------------------------------------------------------------------------------- intensity


@dataclass(frozen=True)
class Window:
    """CT window: [level - width/2, level + width/2] HU mapped linearly to 0..255."""

    level: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.level) and math.isfinite(self.width)):
            raise ValueError(f"CT window level {self.level} and width {self.width}: expected finite numbers (HU)")
        if not self.width > 0:
            raise ValueError(f"CT window width must be positive, got {self.width}")

    @classmethod
    def named(cls, preset: str) -> "Window":
        try:
            return cls(*CT_PRESETS[preset])
        except KeyError:
            raise ValueError(f"CT window preset {preset!r}: expected one of {', '.join(CT_PRESETS)}") from None

    def __call__(self, a: np.ndarray) -> np.ndarray:
        lo = self.level - self.width / 2
        return np.round(np.clip((a.astype(np.float64) - lo) / self.width, 0.0, 1.0) * 255).astype(np.uint8)

    def info(self) -> dict[str, Any]:
        return {"rule": "ct_window", "level": self.level, "width": self.width}


@dataclass(frozen=True)
class PercentileClip:
    """MR-style scaling: clip to the [low, high] percentiles of a volume's non-zero voxels, map to 0..255, and
    keep zero voxels (background) at 0."""

    low: float
    high: float
    percentiles: tuple[float, float] = (0.5, 99.5)

    @classmethod
    def of(cls, data: np.ndarray, name: str, percentiles: tuple[float, float] = (0.5, 99.5)) -> "PercentileClip":
        nz = data[data != 0]
        if nz.size == 0:
            raise ConversionError(f"{name}: image volume is zero everywhere")
        lo, hi = np.percentile(nz.astype(np.float64), percentiles)
        return cls(float(lo), float(hi), percentiles)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        a64 = a.astype(np.float64)
        span = self.high - self.low
        out = (np.clip(a64, self.low, self.high) - self.low) / span if span > 0 else np.zeros_like(a64)
        out = np.round(out * 255).astype(np.uint8)
        out[a == 0] = 0
        return out

    def info(self) -> dict[str, Any]:
        return {"rule": "percentile_clip", "percentiles": list(self.percentiles), "low": round(self.low, 6),
                "high": round(self.high, 6)}


# ----------------------------------------------------------------------------------------------------- slicing


def remove_small_objects(mask: np.ndarray, min_pixels: int) -> tuple[np.ndarray, int]:
    """Drop 8-connected components with fewer than ``min_pixels`` pixels; returns (mask, number removed)."""
    if min_pixels <= 1 or not mask.any():
        return mask, 0
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_pixels) + 1
    if small.size == 0:
        return mask, 0
    return mask & ~np.isin(lab, small), int(small.size)


LABEL_MODES = ("binary", "each")


def cut(
    base_id: str,
    labels: np.ndarray,
    image_of: Callable[[int, int | None], tuple[np.ndarray, dict[str, Any]]],
    *,
    letter: str | None,
    mode: str = "binary",
    min_object_pixels: int = 0,
    info: dict[str, Any] | None = None,
) -> Iterator[tuple[str, Loaded]]:
    """The 2D samples of a (slice, row, col) label stack, as (sample id, Loaded).

    Slices whose mask is empty after removing objects under ``min_object_pixels`` are skipped. ``mode`` 'binary'
    gives one sample per slice (label > 0); 'each' one per label value present in the slice (id suffix ``_l<v>``).
    ``image_of(slice index, label or None)`` returns the uint8 image of a slice and its meta fields. Sample ids are
    ``<base_id>_<letter><index:04d>`` (just ``base_id`` when ``letter`` is None: one 2D image).
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"-o labels={mode!r}: expected one of {', '.join(LABEL_MODES)}")
    for z in range(labels.shape[0]):
        lab = np.ascontiguousarray(labels[z])
        if not lab.any():
            continue
        sid = base_id if letter is None else f"{base_id}_{letter}{z:04d}"
        values = [None] if mode == "binary" else [int(v) for v in np.unique(lab) if v > 0]
        for v in values:
            mask, removed = remove_small_objects(lab > 0 if v is None else lab == v, min_object_pixels)
            if not mask.any():
                continue
            image, image_info = image_of(z, v)
            extra: dict[str, Any] = {**(info or {}), **image_info}
            if letter is not None:
                extra.update(slice_index=z, num_slices=int(labels.shape[0]))
            if v is None:
                extra["labels"] = [int(x) for x in np.unique(lab[mask]) if x > 0]
            else:
                extra["label"] = v
            if removed:
                extra["removed_objects"] = removed
            yield (sid if v is None else f"{sid}_l{v}"), Loaded(image, mask, info=extra)


__all__ = ["AXES", "CT_PRESETS", "Grid", "LABEL_MODES", "PercentileClip", "READERS", "Volume", "Window",
           "axis_name", "canonical", "check_grids", "cut", "label_values", "read_nibabel", "read_sitk",
           "read_volume", "remove_small_objects", "stack", "volume_suffix"]
