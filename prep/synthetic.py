"""Small fake datasets in the exact official layouts, with each format's quirks (MONAI ``synthetic.py`` style).

Used by the tests (torchvision ``inject_fake_data`` style) and by ``medprep demo``. Images are smooth textures
with a lesion-like blob; masks cover the blob, so resized masks and images stay visibly aligned.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zipfile
from functools import partial
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


def make_isic2018(root: Path, n: tuple[int, int, int] = (6, 2, 2), seed: int = 0,
                  hw: tuple[int, int] | None = None) -> Path:
    """ISIC-2018 Task 1: JPEG inputs of varying size (or all ``hw``), PNG ``_segmentation`` masks,
    LICENSE/ATTRIBUTION files."""
    rng = np.random.default_rng(seed)
    base = root / "ISIC2018"
    k = 0
    for part, count in zip(("Training", "Validation", "Test"), n):
        inp, gt = base / f"ISIC2018_Task1-2_{part}_Input", base / f"ISIC2018_Task1_{part}_GroundTruth"
        for _ in range(count):
            h, w = hw or (int(rng.integers(60, 140)), int(rng.integers(80, 160)))
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


def _tar_bytes(members: dict[str, bytes], gz: bool = False) -> bytes:
    """A deterministic tar (fixed mtime/owner) of ``members`` (name -> bytes); gzip-compressed if ``gz``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "u", "g"
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0) if gz else buf.getvalue()


def pack(folder: Path, dest: Path) -> Path:
    """Pack ``folder`` into the archive ``dest`` (.zip, .tar, .tar.gz or .tgz by suffix) with the folder itself as the
    top-level entry, as official downloads are zipped; deterministic bytes."""
    folder, dest = Path(folder), Path(dest)
    members = {f"{folder.name}/{p.relative_to(folder).as_posix()}": p.read_bytes()
               for p in sorted(folder.rglob("*")) if p.is_file()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    else:
        dest.write_bytes(_tar_bytes(members, gz=dest.name.endswith((".tar.gz", ".tgz"))))
    return dest


def ppm_gz(arr: np.ndarray) -> bytes:
    """A gzipped PPM/PGM (STARE), with a zero gzip timestamp."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PPM")
    return gzip.compress(buf.getvalue(), mtime=0)


def tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")
    return buf.getvalue()


def _vessels(h: int, w: int, rng: np.random.Generator, fov: np.ndarray | None = None) -> np.ndarray:
    v = np.zeros((h, w), np.uint8)
    for _ in range(5):
        pts = np.stack([rng.integers(0, w, 4), rng.integers(0, h, 4)], axis=1).astype(np.int32)
        cv2.polylines(v, [pts], False, 1, 1)
    return v.astype(bool) & (fov if fov is not None else True)


def make_ph2(root: Path, n: int = 6, seed: int = 0) -> Path:
    """PH2: ``IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` (RGB BMP), ``IMDxxx_lesion/IMDxxx_lesion.bmp`` (8-bit,
    one 1-bit), ``IMDxxx_roi/`` colour-class masks to ignore; ids not contiguous."""
    rng = np.random.default_rng(seed)
    base = root / "PH2Dataset"
    cases = base / "PH2 Dataset images"
    for i in range(n):
        sid = f"IMD{2 + 3 * i:03d}"
        img, mask = scene(56, 77, rng)
        _write(cases / sid / f"{sid}_Dermoscopic_Image" / f"{sid}.bmp", bmp(img))
        if i == 0:
            buf = io.BytesIO()
            Image.fromarray(mask).convert("1").save(buf, format="BMP")
            _write(cases / sid / f"{sid}_lesion" / f"{sid}_lesion.bmp", buf.getvalue())
        else:
            _write(cases / sid / f"{sid}_lesion" / f"{sid}_lesion.bmp", bmp(u8(mask)))
        _write(cases / sid / f"{sid}_roi" / f"{sid}_R1_Label4.bmp", bmp(u8(~mask)))
    _write(base / "PH2_dataset.txt", b"|| Name || Histological Diagnosis || Common Nevus || ...\n")
    return base


STARE_IDS = ("im0001", "im0002", "im0044", "im0077", "im0081", "im0139", "im0162", "im0163")


def make_stare(root: Path, n: int = 6, labelled: int = 4, seed: int = 0, archives: bool = True) -> Path:
    """STARE: ``stare-images.tar`` of ``imNNNN.ppm.gz`` (``n`` images, the first ``labelled`` with labels),
    ``labels-ah.tar`` and ``labels-vk.tar`` of ``imNNNN.{ah,vk}.ppm.gz``; ``archives=False`` writes the folders the
    tars extract to instead."""
    rng = np.random.default_rng(seed)
    base = root / "STARE"
    parts: dict[str, dict[str, bytes]] = {"stare-images": {}, "labels-ah": {}, "labels-vk": {}}
    for i, sid in enumerate(STARE_IDS[:n]):
        img, _ = scene(61, 70, rng)
        ah = _vessels(61, 70, rng)
        parts["stare-images"][f"{sid}.ppm.gz"] = ppm_gz(img)
        if i < labelled:
            vk = cv2.dilate(ah.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)  # the thicker annotator
            parts["labels-ah"][f"{sid}.ah.ppm.gz"] = ppm_gz(np.repeat(u8(ah)[..., None], 3, axis=2))
            parts["labels-vk"][f"{sid}.vk.ppm.gz"] = ppm_gz(u8(vk))
    for name, members in parts.items():
        if archives:
            _write(base / f"{name}.tar", _tar_bytes(members))
        else:
            for member, data in members.items():
                _write(base / name / member, data)
    return base


def make_chase_db1(root: Path, n: int = 3, seed: int = 0) -> Path:
    """CHASE_DB1: flat ``Image_NN{L,R}.jpg`` with ``_1stHO.png`` and ``_2ndHO.png`` vessel maps (2n images)."""
    rng = np.random.default_rng(seed)
    base = root / "CHASEDB1"
    for i in range(1, n + 1):
        for eye in "LR":
            sid = f"Image_{i:02d}{eye}"
            img, _ = scene(48, 50, rng)
            first = _vessels(48, 50, rng)
            second = first.copy()
            second[:, :25] = False  # the second observer marked less
            _write(base / f"{sid}.jpg", jpeg(img))
            _write(base / f"{sid}_1stHO.png", png(u8(first)))
            _write(base / f"{sid}_2ndHO.png", png(u8(second)))
    return base


def make_hrf(root: Path, n: int = 2, seed: int = 0) -> Path:
    """HRF: ``images/NN_{h,g,dr}.jpg`` (the ``dr`` ones as ``.JPG``), ``manual1/NN_x.tif`` vessels and RGB
    ``mask/NN_x_mask.tif`` field of view (3n images)."""
    rng = np.random.default_rng(seed)
    base = root / "HRF"
    h, w = 40, 60
    yy, xx = np.mgrid[0:h, 0:w]
    fov = ((yy - h / 2) / (h * 0.48)) ** 2 + ((xx - w / 2) / (w * 0.48)) ** 2 <= 1
    for i in range(1, n + 1):
        for cond in ("h", "g", "dr"):
            sid = f"{i:02d}_{cond}"
            img, _ = scene(h, w, rng)
            _write(base / "images" / f"{sid}.{'JPG' if cond == 'dr' else 'jpg'}", jpeg(img))
            _write(base / "manual1" / f"{sid}.tif", tiff(u8(_vessels(h, w, rng, fov))))
            _write(base / "mask" / f"{sid}_mask.tif", tiff(np.repeat(u8(fov)[..., None], 3, axis=2)))
    return base


def make_busi(root: Path, n: tuple[int, int, int] = (3, 3, 2), seed: int = 0) -> Path:
    """BUSI: ``<class>/<class> (N).png`` (grey as RGB) with ``_mask.png``; ``benign (2)`` has a second lesion in
    ``_mask_1.png``; one mask RGB, one RGBA; ``normal`` masks are empty."""
    rng = np.random.default_rng(seed)
    base = root / "Dataset_BUSI_with_GT"
    for cls, count in zip(("benign", "malignant", "normal"), n):
        for i in range(1, count + 1):
            name = f"{cls} ({i})"
            img, mask = scene(50, 66, rng, blobs=0 if cls == "normal" else 1)
            _write(base / cls / f"{name}.png", png(np.repeat(img[..., :1], 3, axis=2)))
            m = u8(mask)
            if cls == "benign" and i == 2:
                second = np.zeros_like(mask)
                second[4:12, 4:14] = True
                _write(base / cls / f"{name}_mask_1.png", png(u8(second)))
            if cls == "malignant" and i == 1:
                m = np.repeat(m[..., None], 3, axis=2)  # an RGB mask
            if cls == "malignant" and i == 2:
                m = np.dstack([m, m, m, np.full(m.shape, 255, np.uint8)])  # an RGBA mask
            _write(base / cls / f"{name}_mask.png", png(m))
    return base


def make_tnbc(root: Path, slides: int = 3, per_slide: int = 2, seed: int = 0) -> Path:
    """TNBC: ``Slide_xx/xx_n.png`` RGBA (alpha 255) H&E tiles, ``GT_xx/xx_n.png`` 0/255 masks, a ``__MACOSX/``
    shadow folder of AppleDouble files."""
    rng = np.random.default_rng(seed)
    base = root / "TNBC_NucleiSegmentation"
    for s in range(1, slides + 1):
        for k in range(1, per_slide + 1):
            name = f"{s:02d}_{k}.png"
            img, mask = scene(32, 32, rng, blobs=3)
            _write(base / f"Slide_{s:02d}" / name, png(np.dstack([img, np.full((32, 32), 255, np.uint8)])))
            _write(base / f"GT_{s:02d}" / name, png(u8(mask)))
            _write(root / "__MACOSX" / base.name / f"Slide_{s:02d}" / f"._{name}", b"\x00\x05\x16\x07AppleDouble")
    return base


def make_kvasir_seg(root: Path, n: int = 5, seed: int = 0) -> Path:
    """Kvasir-SEG: JPEG images and RGB JPEG masks (ringing around 0 and 255), ``kavsir_bboxes.json``."""
    rng = np.random.default_rng(seed)
    base = root / "Kvasir-SEG"
    for i in range(n):
        sid = hashlib.sha256(f"kvasir{seed}-{i}".encode()).hexdigest()[:25]
        h, w = int(rng.integers(50, 70)), int(rng.integers(60, 80))
        img, mask = scene(h, w, rng)
        _write(base / "images" / f"{sid}.jpg", jpeg(img))
        _write(base / "masks" / f"{sid}.jpg", jpeg(np.repeat(u8(mask)[..., None], 3, axis=2), quality=75))
    _write(base / "kavsir_bboxes.json", b"{}\n")
    return base


def make_colon_mirror(root: Path, n: int = 5, seed: int = 0, folder: str = "CVC-ColonDB") -> Path:
    """Polyp-benchmark mirror of CVC-ColonDB / CVC-300 / ETIS: ``images/N.png`` and RGB ``masks/N.png`` whose edges
    were smoothed by resizing (values between 0 and 255 along the border)."""
    rng = np.random.default_rng(seed)
    base = root / folder
    for i in range(1, n + 1):
        img, mask = scene(40, 52, rng)
        soft = cv2.GaussianBlur(u8(mask), (3, 3), 0)
        _write(base / "images" / f"{i}.png", png(img))
        _write(base / "masks" / f"{i}.png", png(np.repeat(soft[..., None], 3, axis=2)))
    return base


def make_nih_lung(root: Path, n: int = 5, seed: int = 0) -> Path:
    """NIH lung set: grey PNG X-rays ``images/NIH_0001.png`` and 0/255 ``masks/NIH_0001.png``."""
    rng = np.random.default_rng(seed)
    base = root / "NIH"
    for i in range(1, n + 1):
        img, _ = scene(64, 64, rng)
        lungs = np.zeros((64, 64), bool)
        lungs[12:54, 8:28] = lungs[12:54, 36:56] = True
        _write(base / "images" / f"NIH_{i:04d}.png", png(img[..., 0]))
        _write(base / "masks" / f"NIH_{i:04d}.png", png(u8(lungs)))
    return base


def aperio_xml(polygons: list[np.ndarray]) -> bytes:
    """Aperio ImageScope annotation XML with one ``<Region>`` per polygon (float pixel coordinates)."""
    regions = "".join(
        f'<Region Id="{k}" Type="0"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x:.3f}" Y="{y:.3f}" Z="0"/>' for x, y in poly)
        + "</Vertices></Region>" for k, poly in enumerate(polygons, start=1))
    return (f'<?xml version="1.0"?><Annotations MicronsPerPixel="0.252100"><Annotation Id="1"><Regions>{regions}'
            f"</Regions></Annotation></Annotations>").encode()


def nucleus(cx: float, cy: float, r: float, k: int = 12) -> np.ndarray:
    """A round polygon (k vertices) as an Aperio region would trace a nucleus."""
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def make_monuseg(root: Path, n_train: int = 3, n_test: int = 2, seed: int = 0) -> Path:
    """MoNuSeg: ``MoNuSeg 2018 Training Data/Tissue Images/TCGA-*.tif`` + ``Annotations/TCGA-*.xml`` and
    ``MoNuSegTestData/TCGA-*.{tif,xml}``; four nuclei per tile, the last two overlapping; ``__MACOSX/``."""
    rng = np.random.default_rng(seed)
    base = root / "MoNuSeg"
    for i in range(n_train + n_test):
        sid = f"TCGA-{i:02d}-{seed:04d}-01Z-00-DX1"
        img, _ = scene(64, 64, rng, blobs=0)
        polys = [nucleus(14.3, 14.6, 5.2), nucleus(46.0, 16.0, 4.0), nucleus(20.0, 46.0, 6.0), nucleus(27.0, 46.0, 6.0)]
        if i < n_train:
            folder = base / "MoNuSeg 2018 Training Data"
            _write(folder / "Tissue Images" / f"{sid}.tif", tiff_lzw(img))
            _write(folder / "Annotations" / f"{sid}.xml", aperio_xml(polys))
        else:
            _write(base / "MoNuSegTestData" / f"{sid}.tif", tiff_lzw(img))
            _write(base / "MoNuSegTestData" / f"{sid}.xml", aperio_xml(polys))
    _write(base / "__MACOSX" / "MoNuSegTestData" / "._x.tif", b"\x00\x05\x16\x07")
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


UNSEEN_DOMAINS: dict[str, Callable[..., Path]] = {
    "ph2": make_ph2,
    "stare": make_stare,
    "chase-db1": make_chase_db1,
    "hrf": make_hrf,
    "busi": make_busi,
    "tnbc": make_tnbc,
    "kvasir-seg": make_kvasir_seg,
    "cvc-colondb": partial(make_colon_mirror, folder="CVC-ColonDB"),
    "cvc-300": partial(make_colon_mirror, folder="CVC-300"),
    "etis-larib": partial(make_colon_mirror, folder="ETIS-LaribPolypDB"),
    "nih-lung": make_nih_lung,
    "monuseg": make_monuseg,
}

def make(dataset: str, root: str | Path, seed: int = 0, **sizes: object) -> Path:
    """Write a fake ``dataset`` under ``root`` in its official layout; returns the dataset's folder."""
    return {**SOURCE_DOMAINS, **UNSEEN_DOMAINS}[dataset](Path(root), seed=seed, **sizes)
