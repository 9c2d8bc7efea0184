"""Score distributions behind ``medprep.prep.leakage``'s thresholds: distinct pairs vs planted copies.

    python benchmarks/leakage_margins.py [--sizes 1024,256] [--real ../shared/realdata]

Images: the real sample files (DRIVE, Kvasir-SEG, DSB-2018; skipped when absent), the DRIVE eyes mirrored (hard
negatives: same field of view, disc and macula, another vessel layout) and the registry's fake DRIVE, STARE,
CHASE_DB1, HRF, Kvasir-SEG, CVC-ColonDB and ISIC-2018 sets. Copies are made from the source image, then every image
is resized to the build size as ``medprep build`` does (stretch, area/linear). Prints, per pair kind and build size,
the gate and the score (min / median / max) of ``medprep.prep.leakage``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import itertools
import tempfile
from pathlib import Path

import cv2
import numpy as np

from medprep.prep import leakage, synthetic


def _rgb(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(img[..., ::-1])


def sources(real: Path, tmp: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (modality, RGB image)."""
    out = {}
    for modality, pattern in (("fundus", "DRIVE/*/images/*.tif"), ("colon", "Kvasir-SEG/images/*.jpg"),
                              ("micro", "stage1_train/*/images/*.png")):
        for f in sorted(real.glob(pattern)):
            out[f"real:{f.stem[:12]}"] = (modality, _rgb(f.read_bytes()))
    fakes = {"drive": ("fundus", "**/images/*.tif"), "stare": ("fundus", "**/stare-images/*.ppm.gz"),
             "chase-db1": ("fundus", "**/Image_*[LR].jpg"), "hrf": ("fundus", "**/images/*.*"),
             "kvasir-seg": ("colon", "**/images/*.jpg"), "cvc-colondb": ("colon", "**/images/*"),
             "isic2018": ("derm", "**/*Input*/*.jpg")}
    for name, (modality, pattern) in fakes.items():
        root = synthetic.make(name, tmp / name, **({"archives": False} if name == "stare" else {}))
        for f in sorted(root.glob(pattern)):
            data = f.read_bytes()
            out[f"fake-{name}:{f.stem}"] = (modality, _rgb(gzip.decompress(data) if f.suffix == ".gz" else data))
    return out


def _jpeg(x: np.ndarray, q: int) -> np.ndarray:
    return _rgb(cv2.imencode(".jpg", x[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes())


def _crop(x: np.ndarray, t: float, b: float, l: float, r: float) -> np.ndarray:
    h, w = x.shape[:2]
    return cv2.resize(x[round(h * t): h - round(h * b), round(w * l): w - round(w * r)], (w, h))


def _scale(x: np.ndarray, f: float) -> np.ndarray:
    return cv2.resize(x, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def _level(x: np.ndarray, gain: float, offset: float = 0) -> np.ndarray:
    return np.clip(x.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


COPIES = {
    "resize 0.5": lambda x: _scale(x, 0.5), "resize 0.75": lambda x: _scale(x, 0.75),
    "resize 1.5": lambda x: _scale(x, 1.5), "jpeg 40": lambda x: _jpeg(x, 40), "jpeg 75": lambda x: _jpeg(x, 75),
    "crop 5% centred": lambda x: _crop(x, .025, .025, .025, .025),
    "crop 10% centred": lambda x: _crop(x, .05, .05, .05, .05), "crop 10% corner": lambda x: _crop(x, .1, 0, .1, 0),
    "crop 10% left": lambda x: _crop(x, 0, 0, .1, 0), "brightness x0.8": lambda x: _level(x, 0.8),
    "brightness x1.2": lambda x: _level(x, 1.2), "brightness +40": lambda x: _level(x, 1, 40),
    "brightness -40": lambda x: _level(x, 1, -40),
    "all at once": lambda x: _jpeg(_level(_scale(_crop(x, .08, 0, 0, .08), 0.7), 1.2), 60),
}
MIRRORS = {"mirror lr": lambda x: x[:, ::-1], "mirror ud": lambda x: x[::-1], "rotate 180": lambda x: x[::-1, ::-1]}


def built(x: np.ndarray, size: int) -> np.ndarray:
    interp = cv2.INTER_AREA if size < max(x.shape[:2]) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(x), (size, size), interpolation=interp)


def measure(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(gate, score) of two built images."""
    x, y = leakage.describe("a", "a", "a", a), leakage.describe("b", "b", "b", b)
    gate = max(float((x.views @ y.views[0]).max()), float((y.views @ x.views[0]).max()))
    return gate, leakage.structure_score(x.grey.astype(np.float32), y.grey.astype(np.float32))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024,256")
    ap.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "realdata")
    args = ap.parse_args()
    rows: dict[tuple[str, str, int], list[tuple[float, float]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        src = sources(args.real, Path(tmp))
    for size in (int(s) for s in args.sizes.split(",")):
        b = {k: built(img, size) for k, (_, img) in src.items()}
        for k, (_, img) in src.items():
            origin = "real" if k.startswith("real") else "fake"
            for name, fn in COPIES.items():
                rows[(f"copy of {origin}", name, size)].append(measure(b[k], built(fn(img), size)))
        eyes = {k: b[k] for k in b if k.startswith("real:") and src[k][0] == "fundus"}
        eyes |= {f"{k}|{m}": built(fn(src[k][1]), size) for k in list(eyes) for m, fn in MIRRORS.items()}
        for x, y in itertools.combinations(eyes, 2):
            if x.split("|")[0] != y.split("|")[0]:
                rows[("distinct", "real eyes and mirrors", size)].append(measure(eyes[x], eyes[y]))
        for x, y in itertools.combinations(src, 2):
            if not (x.startswith("real") and y.startswith("real") and src[x][0] == src[y][0] == "fundus"):
                kind = "same modality" if src[x][0] == src[y][0] else "across modalities"
                origin = "real" if x.startswith("real") or y.startswith("real") else "fake"
                rows[("distinct", f"{kind} ({origin})", size)].append(measure(b[x], b[y]))
    print(f"{'pairs':18s} {'kind':24s} {'size':>5s} {'n':>4s}   gate min/median/max   score min/median/max")
    for (group, kind, size), v in sorted(rows.items()):
        a = np.array(v)
        print(f"{group:18s} {kind:24s} {size:5d} {len(a):4d}   "
              + "   ".join(f"{c.min():5.2f}/{np.median(c):5.2f}/{c.max():5.2f}" for c in a.T))


if __name__ == "__main__":
    main()
