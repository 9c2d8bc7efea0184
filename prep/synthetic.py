"""Small fake datasets in the exact official layouts, with each format's quirks (MONAI ``synthetic.py`` style).

Used by the tests (torchvision ``inject_fake_data`` style) and by ``medprep demo``. Images are smooth textures
with a lesion-like blob; masks cover the blob, so resized masks and images stay visibly aligned.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image


def scene(h: int, w: int, rng: np.random.Generator, blobs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image (smooth background + noise + dark elliptic blobs) and the bool mask of its blobs."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 200, 3).astype(np.float32)
    grad = (xx / max(w, 1))[..., None] * rng.uniform(-40, 40, 3) + (yy / max(h, 1))[..., None] * rng.uniform(-40, 40, 3)
    img = base + grad + rng.normal(0, 6, (h, w, 3))
    mask = np.zeros((h, w), bool)
    for _ in range(blobs):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.08, 0.22) * h, rng.uniform(0.08, 0.22) * w
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        mask |= blob
        img[blob] -= rng.uniform(30, 60)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def png(arr: np.ndarray) -> bytes:
    """PNG bytes of an RGB(A), grey or 16-bit grey array (PIL, as most dataset producers used)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def tiff_lzw(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF", compression="tiff_lzw")
    return buf.getvalue()


def gif(mask: np.ndarray) -> bytes:
    """A 0/255 mask as a GIF (DRIVE's manual and FOV masks)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="GIF")
    return buf.getvalue()


def bmp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="BMP")
    return buf.getvalue()


def u8(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def make_isic2018(root: Path, n: tuple[int, int, int] = (6, 2, 2), seed: int = 0) -> Path:
    """ISIC-2018 Task 1: JPEG inputs of varying size, PNG ``_segmentation`` masks, LICENSE/ATTRIBUTION files."""
    rng = np.random.default_rng(seed)
    base = root / "ISIC2018"
    k = 0
    for part, count in zip(("Training", "Validation", "Test"), n):
        inp, gt = base / f"ISIC2018_Task1-2_{part}_Input", base / f"ISIC2018_Task1_{part}_GroundTruth"
        for _ in range(count):
            h, w = int(rng.integers(60, 140)), int(rng.integers(80, 160))
            img, mask = scene(h, w, rng)
            _write(inp / f"ISIC_{k:07d}.jpg", jpeg(img))
            _write(gt / f"ISIC_{k:07d}_segmentation.png", png(u8(mask)))
            k += 1
        for d in (inp, gt):
            _write(d / "LICENSE.txt", b"CC-BY-NC\n")
            _write(d / "ATTRIBUTION.txt", b"ISIC Archive\n")
    return base


def make_montgomery(root: Path, n: int = 10, seed: int = 0) -> Path:
    """Montgomery: 16-bit and 8-bit grey PNG chest X-rays, left and right lung masks in separate folders."""
    rng = np.random.default_rng(seed)
    base = root / "MontgomerySet"
    for i in range(n):
        name = f"MCUCXR_{i + 1:04d}_{i % 2}.png"
        img, _ = scene(96, 80, rng)
        grey = img[..., 0].astype(np.uint16) * 16 if i % 2 == 0 else img[..., 0]  # some 12-bit-in-16 images
        left, right = np.zeros((96, 80), bool), np.zeros((96, 80), bool)
        left[20:80, 8:34] = True
        right[20:80, 46:72] = True
        _write(base / "CXR_png" / name, png(grey))
        _write(base / "ManualMask" / "leftMask" / name, png(u8(left)))
        _write(base / "ManualMask" / "rightMask" / name, png(u8(right)))
        _write(base / "ClinicalReadings" / f"{name[:-4]}.txt", b"Patient's Sex: F\n")
    return base


def make_shenzhen(root: Path, n: int = 10, seed: int = 0, unmasked: int = 1) -> Path:
    """Shenzhen: grey X-rays stored as RGB PNG; Stirenko masks ``mask/CHNCXR_####_x_mask.png`` for all but
    ``unmasked`` images (the real set has 566 masks for 662 images)."""
    rng = np.random.default_rng(seed)
    base = root / "ChinaSet_AllFiles"
    for i in range(n):
        name = f"CHNCXR_{i + 1:04d}_{i % 2}"
        img, mask = scene(80, 88, rng)
        _write(base / "CXR_png" / f"{name}.png", png(np.repeat(img[..., :1], 3, axis=2)))
        if i < n - unmasked:
            _write(base / "mask" / f"{name}_mask.png", png(u8(mask)))
    return base


def make_drive(root: Path, n_train: int = 5, n_test: int = 2, seed: int = 0) -> Path:
    """DRIVE: RGB LZW TIFF images, GIF (mode L, 0/255) vessel and FOV masks, the 21-40 / 01-20 numbering."""
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
            _write(base / part / "images" / f"{sid}.tif", tiff_lzw(img))
            _write(base / part / "1st_manual" / f"{nn:02d}_manual1.gif", gif(vessels))
            _write(base / part / "mask" / f"{sid}_mask.gif", gif(fov))
    return base


def make_cvc_clinicdb(root: Path, n: int = 12, seed: int = 0, variant: str = "tif",
                      sequences: int = 3) -> Path:
    """CVC-ClinicDB: ``Original/{1..n}.tif`` and ``Ground Truth/`` (space in the name); ``variant='png'`` writes
    the Kaggle mirror (``PNG/`` + ``metadata.csv`` mapping frames to ``sequences`` video sequences)."""
    rng = np.random.default_rng(seed)
    base = root / ("CVC-ClinicDB" if variant == "tif" else "cvc-clinicdb-kaggle")
    folder = base if variant == "tif" else base / "PNG"
    enc = tiff_lzw if variant == "tif" else png
    rows = ["frame_id,png_image_path,png_mask_path,sequence_id"]
    for i in range(1, n + 1):
        img, mask = scene(36, 48, rng)
        _write(folder / "Original" / f"{i}.{variant}", enc(img))
        _write(folder / "Ground Truth" / f"{i}.{variant}", enc(u8(mask)))
        rows.append(f"{i},PNG/Original/{i}.png,PNG/Ground Truth/{i}.png,{1 + (i - 1) * sequences // n}")
    if variant == "png":
        _write(base / "metadata.csv", ("\n".join(rows) + "\n").encode())
    return base


def make_udiat(root: Path, n: int = 10, seed: int = 0) -> Path:
    """UDIAT Dataset B: grey PNG ultrasound ``original/000001.png`` and 0/255 ``GT/000001.png``."""
    rng = np.random.default_rng(seed)
    base = root / "BUS_Dataset_B"
    for i in range(1, n + 1):
        img, mask = scene(60, 76, rng)
        _write(base / "original" / f"{i:06d}.png", png(img[..., 1]))
        _write(base / "GT" / f"{i:06d}.png", png(u8(mask)))
    return base


def make_dsb2018(root: Path, n: int = 8, seed: int = 0) -> Path:
    """DSB-2018 stage1_train: RGBA images (alpha 255) in ``<id>/images/``, one 0/255 PNG per nucleus."""
    rng = np.random.default_rng(seed)
    base = root / "stage1_train"
    for i in range(n):
        sid = hashlib.sha256(f"dsb{seed}-{i}".encode()).hexdigest()
        img, _ = scene(64, 80, rng, blobs=0)
        img = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
        taken = np.zeros((64, 80), bool)
        for j in range(int(rng.integers(2, 6))):
            nucleus = np.zeros((64, 80), np.uint8)
            cv2.circle(nucleus, (int(rng.integers(8, 72)), int(rng.integers(8, 56))), int(rng.integers(3, 7)), 1, -1)
            nucleus = nucleus.astype(bool) & ~taken  # nuclei do not overlap in DSB
            taken |= nucleus
            img[nucleus, :3] //= 3
            mid = hashlib.sha256(f"{sid}-{j}".encode()).hexdigest()
            _write(base / sid / "masks" / f"{mid}.png", png(u8(nucleus)))
        _write(base / sid / "images" / f"{sid}.png", png(img))
    return base


SOURCE_DOMAINS: dict[str, Callable[..., Path]] = {
    "isic2018": make_isic2018,
    "montgomery": make_montgomery,
    "shenzhen": make_shenzhen,
    "drive": make_drive,
    "cvc-clinicdb": make_cvc_clinicdb,
    "udiat": make_udiat,
    "dsb2018": make_dsb2018,
}


def make(dataset: str, root: str | Path, seed: int = 0, **sizes: object) -> Path:
    """Write a fake ``dataset`` under ``root`` in its official layout; returns the dataset's folder."""
    return SOURCE_DOMAINS[dataset](Path(root), seed=seed, **sizes)
