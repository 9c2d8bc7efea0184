"""Synthetic volumes with known content, written in the formats medprep reads (MONAI ``synthetic.py`` style).

A phantom is defined in RAS voxel order (i -> right, j -> anterior, k -> superior) with a known spacing: air
(-1000 HU), spheres of known label, radius and intensity centred on voxel centres, and one tiny object. It can be
re-ordered to any orientation (a non-identity direction) before writing; readers that reorient to RAS get the
phantom back exactly. Writers: NIfTI via nibabel, MHA/NRRD/NIfTI via SimpleITK, a DICOM series via SimpleITK,
and the CVPR 2024 "MedSAM on laptop" npz files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medprep.manifests.synthetic import scene


@dataclass(frozen=True)
class Sphere:
    """A ball of ``label`` with intensity ``value`` centred on voxel ``center`` (RAS voxel indices)."""

    center: tuple[int, int, int]
    radius_mm: float
    label: int
    value: int

    def slice_range(self, axis: int, spacing: tuple[float, ...]) -> range:
        """Indices along ``axis`` whose slice holds at least the voxel on the sphere's centre line."""
        r = int(np.floor(self.radius_mm / spacing[axis] + 1e-9))
        return range(self.center[axis] - r, self.center[axis] + r + 1)


SHAPE = (40, 36, 24)
SPACING = (0.9, 0.8, 2.5)
ORIGIN = (-18.0, -14.0, -30.0)
SPHERES = (Sphere((18, 16, 8), 6.0, 1, 100), Sphere((28, 24, 11), 5.0, 2, 300))  # overlap in slices 9-10
SPECK = ((30, 30, 18), 2, 1, 100)  # a 2x2x1-voxel object of label 1 at this corner, for --min-object-pixels
AIR = -1000


def phantom(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = SPACING,
            origin: tuple[float, float, float] = ORIGIN, spheres: tuple[Sphere, ...] = SPHERES,
            speck: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image int16 HU, label uint8, RAS affine) of the phantom in RAS voxel order."""
    idx = np.indices(shape).astype(np.float64)
    image = np.full(shape, AIR, np.int16)
    label = np.zeros(shape, np.uint8)
    for s in spheres:
        d2 = sum(((idx[a] - s.center[a]) * spacing[a]) ** 2 for a in range(3))
        inside = d2 <= s.radius_mm ** 2 + 1e-9
        image[inside], label[inside] = s.value, s.label
    if speck:
        (i, j, k), n, lab, value = SPECK
        image[i:i + n, j:j + n, k], label[i:i + n, j:j + n, k] = value, lab
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return image, label, affine


def mr_like(label: np.ndarray, seed: int = 0) -> np.ndarray:
    """An MR-like float32 volume: zero background, a noisy body box, brighter label regions."""
    rng = np.random.default_rng(seed)
    img = np.zeros(label.shape, np.float32)
    s = tuple(slice(2, n - 2) for n in label.shape)
    img[s] = rng.normal(300, 40, img[s].shape).clip(1, None)
    img[label > 0] += 400 * label[label > 0].astype(np.float32)
    return img


def reorder(data: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same volume with its voxels stored in ``axcodes`` order (e.g. 'PIL'): a non-identity direction."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    ornt = ornt_transform(io_orientation(affine), axcodes2ornt(tuple(axcodes)))
    return apply_orientation(data, ornt), affine @ inv_ornt_aff(ornt, data.shape)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """NIfTI-1 via nibabel, with qform and sform both set (code 1, scanner) so every reader agrees."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _sitk_image(data: np.ndarray, affine: np.ndarray):  # -> SimpleITK.Image
    import SimpleITK as sitk

    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    lps = np.diag([-1.0, -1.0, 1.0])
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps @ (affine[:3, :3] / spacing)).flatten().tolist())
    img.SetOrigin((lps @ affine[:3, 3]).tolist())
    return img


def write_sitk(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """MHA, NRRD or NIfTI via SimpleITK (the format follows the suffix)."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_sitk_image(data, affine), str(path), useCompression=False)
    return path


def write_dicom_series(folder: Path, data: np.ndarray, affine: np.ndarray,
                       uid: str = "1.2.826.0.1.3680043.9.7") -> Path:
    """A CT DICOM series (one int16 file per slice along the third voxel axis) via SimpleITK's GDCM writer (which
    sets the process's locale to "C": it is put back after, so text reads stay UTF-8)."""
    import locale

    import SimpleITK as sitk

    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_series(folder, data, affine, uid, sitk)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(folder: Path, data: np.ndarray, affine: np.ndarray, uid: str, sitk: Any) -> Path:

    folder.mkdir(parents=True, exist_ok=True)
    vol = _sitk_image(data.astype(np.int16), affine)
    d = np.array(vol.GetDirection()).reshape(3, 3)
    sx, sy, sz = vol.GetSpacing()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(data.shape[2]):
        sl = vol[:, :, k:k + 1]  # a one-slice 3D image keeps the full geometry
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.3.{k + 1}", "0008|0060": "CT",
            "0020|000d": f"{uid}.1", "0020|000e": f"{uid}.2", "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{x:.6f}" for x in vol.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{x:.6f}" for x in (*d[:, 0], *d[:, 1])),
            "0028|0030": f"{sy:.6f}\\{sx:.6f}", "0018|0050": f"{sz:.6f}",
            "0028|1052": "0", "0028|1053": "1",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k + 1:04d}.dcm"))
        writer.Execute(sl)
    return folder


def make_volumes(root: Path, cases: int = 3, layout: str = "msd", suffix: str = ".nii.gz",
                 axcodes: str = "LPS", modality: str = "CT") -> Path:
    """An MSD (``imagesTr/x.nii.gz``) or nnU-Net (``imagesTr/x_0000.nii.gz``) dataset of phantoms stored in
    ``axcodes`` order, with dataset.json; case ``i`` has its spheres shifted by ``i`` voxels along k."""
    base = root / "Task01_Phantom"
    for c in range(cases):
        spheres = tuple(Sphere((s.center[0], s.center[1], s.center[2] + c), s.radius_mm, s.label, s.value)
                        for s in SPHERES)
        image, label, affine = phantom(spheres=spheres)
        if modality != "CT":
            image = mr_like(label, seed=c)
        img, aff = reorder(image, affine, axcodes)
        lab, _ = reorder(label, affine, axcodes)
        name = f"case_{c:03d}"
        img_name = f"{name}_0000{suffix}" if layout == "nnunet" else f"{name}{suffix}"
        write = write_nifti if suffix in (".nii", ".nii.gz") else write_sitk
        write(base / "imagesTr" / img_name, img, aff)
        write(base / "labelsTr" / f"{name}{suffix}", lab, aff)
    key = "channel_names" if layout == "nnunet" else "modality"
    (base / "dataset.json").write_text(json.dumps({"name": "Phantom", key: {"0": modality},
                                                   "labels": {"0": "background", "1": "a", "2": "b"}}))
    return base


def write_medsam_npz(path: Path, imgs: np.ndarray, gts: np.ndarray, spacing: tuple[float, ...] | None) -> Path:
    """A "MedSAM on laptop" npz: ``imgs`` (H, W, 3) / (D, H, W) uint8, ``gts`` label map, ``spacing``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"imgs": imgs, "gts": gts, **({"spacing": np.asarray(spacing, np.float64)} if spacing else {})}
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def make_medsam_npz(root: Path, seed: int = 0) -> Path:
    """Two 3D CT npz (slices along axis 0, windowed uint8, spacing in SimpleITK x, y, z order) and two 2D
    dermoscopy npz ((H, W, 3) images, one with two instance labels), in the challenge's file naming."""
    rng = np.random.default_rng(seed)
    base = root / "MedSAM_laptop"
    image, label, _ = phantom()
    imgs = np.clip((image.astype(np.float64) + 160) / 400 * 255, 0, 255).round().astype(np.uint8)
    for c in range(2):
        write_medsam_npz(base / "CT" / f"CT_Phantom_{c:04d}.npz", imgs.transpose(2, 1, 0)[:, ::-1, ::-1].copy(),
                         label.transpose(2, 1, 0)[:, ::-1, ::-1].copy(), SPACING)
    for c in range(2):
        img, mask = scene(64, 80, rng, blobs=2)
        gts = mask.astype(np.uint8)
        if c == 1:
            gts[:, 40:] *= 2  # two labels
        write_medsam_npz(base / "Dermoscopy" / f"Dermoscopy_Fake_{c:04d}.npz", img, gts, None)
    return base


# One file name per modality of the challenge, as its files are named (training files <Prefix>_<dataset>_<case>,
# demo / test files 2DBox_ / 3DBox_), with the modality medprep reads from it; 3D for CT, MR and PET.
CHALLENGE_FILES = {
    "CT_AbdTumor_Adrenal_Ki67_Seg_001.npz": "ct", "3DBox_MR_demo.npz": "mr", "PET_autoPET_fdg_0001.npz": "pet",
    "XRay_Chest-Xray-Masks_CHNCXR_0001.npz": "x-ray", "US_Breast-Ultrasound_benign_1.npz": "ultrasound",
    "2DBox_Mammography_demo.npz": "mammography", "OCT_Intraretinal-Cystoid_0001.npz": "oct",
    "Endoscopy_Kvasir-SEG_cju0qkwl35piu0993l0dewei2.npz": "endoscopy", "Fundus_IDRiD_IDRiD_01.npz": "fundus",
    "Dermoscopy_ISIC2018_ISIC_0000000.npz": "dermoscopy", "Microscope_NeurIPS22CellSeg_cell_00001.npz": "microscopy",
}


def make_challenge_npz(root: Path, seed: int = 0) -> Path:
    """One npz per modality of the challenge (``CHALLENGE_FILES``), with what its real files hold: 2D ``imgs``
    (H, W, 3) uint8 and ``gts`` (H, W) uint8 labels; 3D ``imgs`` (D, H, W) uint8, ``gts`` (D, H, W) uint16 labels
    and ``spacing`` (x, y, z). Every file has foreground; 3D files on 3 of their 4 slices."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, modality in CHALLENGE_FILES.items():
        if modality in ("ct", "mr", "pet"):
            imgs = rng.integers(0, 256, (4, 40, 48), dtype=np.uint8)
            gts = np.zeros(imgs.shape, np.uint16)
            gts[1:, 10:25, 12:30] = 3
            gts[2, 28:34, 30:40] = 1
            write_medsam_npz(root / name, imgs, gts, (0.8, 0.8, 2.5))
        else:
            img, mask = scene(48, 56, rng, blobs=2)
            write_medsam_npz(root / name, img, mask.astype(np.uint8), None)
    return root
