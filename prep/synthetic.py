"""The toolkit for fake datasets in the exact official layouts (MONAI ``synthetic.py`` style): scenes, the file
formats with their quirks (PIL encoders as the datasets' producers used, gzipped PPM, LZW TIFF, GIF, BMP, Aperio
XML), archives, and ``make``, which writes one dataset's fake download through its converter's ``fake`` maker
(each maker lives in its dataset module, ``medprep.prep.datasets.<name>``, and imports this toolkit inside itself).

Used by the tests (torchvision ``inject_fake_data`` style) and by ``medprep demo``. Images are smooth textures
with a lesion-like blob; masks cover the blob, so resized masks and images stay visibly aligned.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from medprep.manifests.synthetic import scene
from medprep.manifests.tar import tar_bytes

from .datasets import make_fake


def write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def png(arr: np.ndarray) -> bytes:
    """PNG bytes of an RGB(A), grey or 16-bit grey array (PIL, as most dataset producers used)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB or grey array."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def tiff_lzw(arr: np.ndarray) -> bytes:
    """An LZW-compressed TIFF (DRIVE, CVC-ClinicDB, MoNuSeg)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF", compression="tiff_lzw")
    return buf.getvalue()


def gif(mask: np.ndarray) -> bytes:
    """A 0/255 mask as a GIF (DRIVE's manual and FOV masks)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="GIF")
    return buf.getvalue()


def bmp(arr: np.ndarray) -> bytes:
    """BMP bytes (24-bit RGB, or 8-bit with a grey palette for a 2D array)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="BMP")
    return buf.getvalue()


def u8(mask: np.ndarray) -> np.ndarray:
    """A bool mask as 0/255 uint8."""
    return mask.astype(np.uint8) * 255


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
        dest.write_bytes(tar_bytes(members, gz=dest.name.endswith((".tar.gz", ".tgz"))))
    return dest


def ppm_gz(arr: np.ndarray) -> bytes:
    """A gzipped PPM/PGM (STARE), with a zero gzip timestamp."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PPM")
    return gzip.compress(buf.getvalue(), mtime=0)


def tiff(arr: np.ndarray) -> bytes:
    """An uncompressed TIFF (HRF)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")
    return buf.getvalue()


def vessels(h: int, w: int, rng: np.random.Generator, fov: np.ndarray | None = None) -> np.ndarray:
    """A bool map of thin random polylines (retinal vessels), inside ``fov`` when given."""
    v = np.zeros((h, w), np.uint8)
    for _ in range(5):
        pts = np.stack([rng.integers(0, w, 4), rng.integers(0, h, 4)], axis=1).astype(np.int32)
        cv2.polylines(v, [pts], False, 1, 1)
    return v.astype(bool) & (fov if fov is not None else True)


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


def make(dataset: str, root: str | Path, seed: int = 0, **sizes: object) -> Path:
    """Write the fake ``dataset`` (its converter's ``fake`` maker) under ``root``; returns the dataset's folder."""
    return make_fake(dataset, root, seed=seed, **sizes)
