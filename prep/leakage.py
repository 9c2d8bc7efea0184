"""Near-duplicate images across built datasets: pairs that sit in two splits of one dataset (split leakage) or in
two datasets (an "unseen" test set that is not unseen).

Why not a perceptual hash: images of one modality look alike at low resolution. On real DRIVE, three distinct eyes
are 4-6 bits apart in a 64-bit DCT hash and their 32x32 thumbnails correlate 0.98, as closely as a copy. What tells
two photographs apart is their fine structure (vessel trees, mucosa texture, nuclei), so that is what is compared:

1. **Descriptor** (per image): the valid region (``valid_hw`` of ``longest`` builds), grey, resized to
   ``ANALYSIS_SIZE`` (128) square; its *detail*: white top-hat minus black-hat with a ``DETAIL_KERNEL`` (5 px)
   ellipse (thin bright and dark structures; step edges such as the black border of a fundus or endoscope field of
   view, which every image of a device shares, give none), divided by its local RMS (Gaussian sigma 4 px, floor 2
   grey levels) so every structured region counts alike.
2. **Gate** (all pairs, a matrix product): the detail pooled to 16x16 under 16 crop views (each side cut by 0 or
   8%); a pair is a candidate when the best view of one correlates with the other at ``DEFAULT_MIN_GATE`` (0.3).
3. **Verification** (candidates): ``cv2.findTransformECC`` aligns the second image to the first (affine, 32 -> 64 ->
   128 px, from the identity and from a phase-correlation shift; a warp is kept only when it is one a copy can
   have: each scale 0.75-1.34, shear < 0.06, shift < 25%); the *score* is the correlation of the two details over
   the overlap. A pair is reported when the score is at least ``DEFAULT_MIN_SCORE`` (0.35). Pixel-identical images
   are always reported (score 1).

Measured with this module's code by ``benchmarks/leakage_margins.py`` (builds at 1024 and 256 px; the real files
of ``realdata/``: 3 DRIVE eyes, 2 Kvasir-SEG, 3 DSB-2018 images; copies made before the build) and on the
look-alike fundus photographs of ``tests/test_leakage.py`` (``fundus_like``, built at 1024):

distinct pairs, highest score (pairs per build size):
  real DRIVE eyes, also against each other's mirror images          0.16  (48)
  40 look-alike fake fundus photographs (same FOV, disc, macula)    0.11  (780)
  real images with the fakes of their modality / of others          0.06 / 0.04  (99 / 286)
  the registry's fake sets, within one modality / across            0.06 / 0.05  (390 / 600)
copies of the real images, lowest score (8 images, 2 build sizes):
  JPEG quality 40 / 75 (lowest: a low-contrast DSB image at 256)    0.50 / 0.56
  brightness -40 levels / +40 / x0.8 / x1.2                         0.56 / 0.88 / 0.93 / 0.94
  crop 8% + resize 0.7 + brightness x1.2 + JPEG 60, all at once     0.57
  crops of 5-10%, centred, at a corner or one side, resized back    0.71
  resized to 0.5 / 0.75 / 1.5                                       0.70 / 0.66 / 0.81

The threshold 0.35 sits 0.19 above the highest distinct pair and 0.15 below the lowest copy. The gate passes
every copy of a real image (lowest 0.44) and prunes unrelated images (across modalities median 0.11); distinct
look-alike fundus photographs pass it (up to 0.76) and are told apart by the verification. The 40-70 px fakes of
the registry are noise and a blob: a JPEG re-encode or a downscale leaves no structure to recognise (0.03-0.53),
their crops and brightness changes are found (>= 0.41).

Cost: the gate is one float32 matrix product over all images (16 views x 256 values each); a candidate takes a
few milliseconds to verify (40 look-alike fundus images at 1024: 272 candidates, 9 s on a busy 2-core machine;
``workers`` processes share them). An image takes 48 KiB in memory.

Images are read from the built shards through ``medprep.manifests``, so builds of any size and resize mode compare.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from medprep.manifests import BuiltDataset, MedprepError, atomic_write, dumps, join, open_datasets

ANALYSIS_SIZE = 128  # images are compared as ANALYSIS_SIZE x ANALYSIS_SIZE grey
DETAIL_KERNEL = 5  # px at ANALYSIS_SIZE: top-hat/black-hat element (vessels, nuclei, texture; not edges)
GATE_SIZE = 16  # the gate compares GATE_SIZE x GATE_SIZE pooled details
GATE_CROP = 0.08  # gate views cut each side by 0 or GATE_CROP
DEFAULT_MIN_GATE = 0.3  # lowest measured copy 0.44; look-alike eyes reach 0.76: the gate only prunes
DEFAULT_MIN_SCORE = 0.35  # distinct pairs <= 0.16, planted copies >= 0.50 (measured; module docstring)
REPORT = "leakage.json"

_R = ANALYSIS_SIZE
_SE = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (DETAIL_KERNEL, DETAIL_KERNEL))
_VIEWS = [(t, b, l, r) for t in (0, GATE_CROP) for b in (0, GATE_CROP) for l in (0, GATE_CROP) for r in (0, GATE_CROP)]
_ECC_LEVELS = (32, 64, 128)
_MIN_OVERLAP = 0.5  # of the first image, after alignment


class ReportError(MedprepError, OSError):
    """A leakage report that cannot be written where it was asked for."""


def grey(image: np.ndarray) -> np.ndarray:
    """The analysis image: grey float32, ``ANALYSIS_SIZE`` square (area when shrinking, linear when enlarging)."""
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    interp = cv2.INTER_AREA if min(g.shape[:2]) >= _R else cv2.INTER_LINEAR
    return cv2.resize(g, (_R, _R), interpolation=interp).astype(np.float32)


def detail(g: np.ndarray) -> np.ndarray:
    """Thin bright minus thin dark structure of a grey analysis image, divided by its local RMS (floor 2)."""
    d = cv2.morphologyEx(g, cv2.MORPH_TOPHAT, _SE) - cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, _SE)
    rms = np.sqrt(cv2.GaussianBlur(d * d, (0, 0), 4.0))
    return d / np.maximum(rms, 2.0)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32).ravel()
    x = x - x.mean()
    return x / max(float(np.linalg.norm(x)), 1e-6)


def gate_views(d: np.ndarray) -> np.ndarray:
    """(16, GATE_SIZE**2) unit vectors: the detail map under each crop view (view 0: uncropped), pooled and
    smoothed; dot products are correlations."""
    h, w = d.shape
    out = []
    for t, b, l, r in _VIEWS:
        c = d[round(h * t): h - round(h * b), round(w * l): w - round(w * r)]
        c = cv2.resize(c, (GATE_SIZE, GATE_SIZE), interpolation=cv2.INTER_AREA)
        out.append(_unit(cv2.GaussianBlur(c, (0, 0), 0.5)))
    return np.stack(out)


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    return float(_unit(x) @ _unit(y)) if x.size > 16 else 0.0


def _plausible(w: np.ndarray) -> bool:
    """A warp a copy can have: crops up to a quarter, resizes, no rotation to speak of."""
    return bool(0.75 <= w[0, 0] <= 1.34 and 0.75 <= w[1, 1] <= 1.34 and abs(w[0, 1]) < 0.06 and abs(w[1, 0]) < 0.06
                and abs(w[0, 2]) < 0.25 * _R and abs(w[1, 2]) < 0.25 * _R)


def _ecc(a: np.ndarray, b: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """Refine ``warp`` (b's coordinates of a's pixels) coarse to fine; a level that fails or leaves the plausible
    range keeps the previous warp."""
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-3)
    for r in _ECC_LEVELS:
        f = r / _R
        aa = cv2.resize(a, (r, r), interpolation=cv2.INTER_AREA) if r < _R else a
        bb = cv2.resize(b, (r, r), interpolation=cv2.INTER_AREA) if r < _R else b
        w = warp.copy()
        w[:, 2] *= f
        try:
            _, w = cv2.findTransformECC(aa, bb, w, cv2.MOTION_AFFINE, crit, None, 5)
        except cv2.error:  # no convergence (unrelated images, flat images): keep the previous level's warp
            continue
        w[:, 2] /= f
        if _plausible(w):
            warp = w
    return warp


def _shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A translation start for crops ECC does not reach from the identity (phase correlation at 64 px)."""
    r = 64
    aa = cv2.GaussianBlur(cv2.resize(a, (r, r), interpolation=cv2.INTER_AREA), (0, 0), 2)
    bb = cv2.GaussianBlur(cv2.resize(b, (r, r), interpolation=cv2.INTER_AREA), (0, 0), 2)
    (dx, dy), _ = cv2.phaseCorrelate(aa, bb, cv2.createHanningWindow((r, r), cv2.CV_32F))
    w = np.eye(2, 3, dtype=np.float32)
    w[0, 2], w[1, 2] = dx * _R / r, dy * _R / r
    return w if _plausible(w) else np.eye(2, 3, dtype=np.float32)


def _aligned_score(a: np.ndarray, da: np.ndarray, b: np.ndarray, warp: np.ndarray) -> float:
    bw = cv2.warpAffine(b, warp, (_R, _R), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)
    inside = cv2.warpAffine(np.ones((_R, _R), np.uint8), warp, (_R, _R),
                            flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)).astype(bool)
    if inside.mean() < _MIN_OVERLAP:
        return 0.0
    return _ncc(da[inside], detail(bw)[inside])


def structure_score(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """Correlation of the details of grey analysis images ``a`` and ``b`` after aligning ``b`` to ``a``, and the
    warp (2x3, b's coordinates of a's pixels): near 1 for copies, near 0 for distinct images."""
    da = detail(a)
    best, best_warp = -1.0, np.eye(2, 3, dtype=np.float32)
    for start in (np.eye(2, 3, dtype=np.float32), _shift(a, b)):
        warp = _ecc(a, b, start)
        s = _aligned_score(a, da, b, warp)
        if s > best:
            best, best_warp = s, warp
    return best, best_warp


@dataclass(frozen=True)
class Item:
    """One sample of a built dataset, described for the comparison."""

    dataset: str
    key: str
    split: str
    digest: str  # sha256 of the valid region's pixels: identical images
    grey: np.ndarray = field(repr=False, compare=False)  # float16 ANALYSIS_SIZE square
    views: np.ndarray = field(repr=False, compare=False)  # gate_views of its detail


def describe(label: str, key: str, split: str, rgb: np.ndarray) -> Item:
    """The :class:`Item` of one decoded RGB (or grey) image."""
    g = grey(rgb)
    digest = hashlib.sha256(repr(rgb.shape).encode() + np.ascontiguousarray(rgb).tobytes()).hexdigest()
    return Item(label, key, split, digest,
                g.astype(np.float16), gate_views(detail(g)))


def _decode(label: str, sample: dict[str, Any]) -> np.ndarray:
    key = sample["__key__"]
    if "image.png" not in sample:
        raise ValueError(f"{label}: sample {key} has no image.png; expected a shard written by 'medprep build'")
    image = cv2.imdecode(np.frombuffer(sample["image.png"], np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{label}: sample {key}: image.png cannot be decoded; run 'medprep verify' on the dataset")
    if "meta.json" in sample:
        h, w = json.loads(sample["meta.json"]).get("valid_hw", image.shape[:2])
        image = image[:h, :w]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def shard_items(root: str, shard: str, label: str) -> list[Item]:
    """The items of one shard of the built dataset at ``root`` (streamed through its manifest; runs on workers)."""
    ds = open_datasets(root)[0]
    split = next(s.split for s in ds.manifest.shards if s.name == shard)
    return [describe(label, raw["__key__"], split, _decode(label, raw))
            for raw in ds.read_shard(shard, ("image.png", "meta.json"))]


class _Pool:
    """Runs ``fn(*task)`` for lists of tasks, results in order: in this process (``workers`` 1) or on one dask
    cluster of ``workers`` processes, started on first use and closed with the ``with`` block."""

    def __init__(self, workers: int):
        self.workers = workers
        self._runner: Any = None

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.close()

    def map(self, fn: Callable[..., Any], tasks: Sequence[Sequence[Any]]) -> list[Any]:
        if self.workers <= 1 or len(tasks) <= 1:
            return [fn(*t) for t in tasks]
        if self._runner is None:
            from medprep.manifests.runner import DaskRunner

            self._runner = DaskRunner(self.workers).__enter__()
        done = dict(self._runner.map(_indexed, list(enumerate(tasks)), fn=fn))
        return [done[i] for i in range(len(tasks))]


def _indexed(task: tuple[int, Sequence[Any]], fn: Callable[..., Any]) -> tuple[int, Any]:
    i, args = task
    return i, fn(*args)


def _describe(ds: BuiltDataset, label: str, pool: _Pool) -> list[Item]:
    parts = pool.map(shard_items, [(ds.root, s.name, label) for s in ds.manifest.shards])
    return [item for part in parts for item in part]


def describe_dataset(root: str | os.PathLike | BuiltDataset, label: str | None = None,
                     workers: int = 1) -> list[Item]:
    """Every sample of a built dataset as an :class:`Item`, in manifest order (``workers`` processes)."""
    ds = open_datasets(root)[0]
    with _Pool(workers) as pool:
        return _describe(ds, label or ds.name, pool)


def _labels(datasets: Sequence[BuiltDataset]) -> list[str]:
    """Dataset names, made unique with their path where two builds of one dataset are compared."""
    names = [d.name for d in datasets]
    return [n if names.count(n) == 1 else f"{n}@{d.root}" for n, d in zip(names, datasets)]


def _comparable(ds: np.ndarray, sp: np.ndarray, rows: slice, focus: str | None) -> np.ndarray:
    """(rows, n) bool: pairs i < j in two splits of one dataset or in two datasets (involving ``focus`` if given)."""
    i = np.arange(len(ds))
    ok = (i[rows, None] < i[None, :]) & ~((ds[rows, None] == ds) & (sp[rows, None] == sp))
    if focus is not None:
        f = ds == focus
        ok &= f[rows, None] | f[None, :]
    return ok


def candidates(items: Sequence[Item], min_gate: float = DEFAULT_MIN_GATE,
               focus: str | None = None) -> list[tuple[int, int, float]]:
    """Comparable pairs ``(i, j, gate)`` whose best crop view correlates at least ``min_gate``; pixel-identical
    pairs are always candidates."""
    if not items:
        return []
    ds = np.array([i.dataset for i in items])
    sp = np.array([i.split for i in items])
    views = np.stack([i.views for i in items])  # (n, v, d)
    n, v, d = views.shape
    full, flat = views[:, 0], views.reshape(n * v, d)
    digest = np.array([i.digest for i in items])
    out = []
    for start in range(0, n, 256):
        stop = min(n, start + 256)
        g1 = (views[start:stop].reshape(-1, d) @ full.T).reshape(stop - start, v, n).max(1)  # a's views vs b
        g2 = (full[start:stop] @ flat.T).reshape(stop - start, n, v).max(2)  # a vs b's views
        gate = np.maximum(g1, g2)
        same = digest[start:stop, None] == digest[None, :]
        hit = _comparable(ds, sp, slice(start, stop), focus) & ((gate >= min_gate) | same)
        out += [(start + int(i), int(j), float(gate[i, j])) for i, j in zip(*np.nonzero(hit))]
    return out


def verify_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[float, list[float]]]:
    """(score, [scale x, scale y, shift x, shift y]) of each (grey a, grey b) pair: a's point p (in image
    fractions) is b's point scale * p + shift (scale 1.11, shift -0.11: b is a 10% crop of a, magnified)."""
    out = []
    for a, b in pairs:
        s, w = structure_score(a.astype(np.float32), b.astype(np.float32))
        out.append((s, [float(w[0, 0]), float(w[1, 1]), float(w[0, 2]) / _R, float(w[1, 2]) / _R]))
    return out


def _find_pairs(items: Sequence[Item], min_score: float, min_gate: float, focus: str | None,
                pool: _Pool) -> tuple[list[dict[str, Any]], int]:
    cands = candidates(items, min_gate, focus)
    todo = [(i, j) for i, j, _ in cands if items[i].digest != items[j].digest]
    chunks = [todo[k: k + 64] for k in range(0, len(todo), 64)]
    results = pool.map(verify_pairs, [([(items[i].grey, items[j].grey) for i, j in c],) for c in chunks])
    verified = dict(zip(todo, (r for part in results for r in part)))
    pairs = []
    for i, j, gate in cands:
        score, warp = verified.get((i, j), (1.0, [1.0, 1.0, 0.0, 0.0]))
        if score < min_score:
            continue
        x, y = items[i], items[j]
        if focus is not None and y.dataset == focus and x.dataset != focus:
            x, y = y, x  # the focused dataset first
        pairs.append({"kind": "split" if x.dataset == y.dataset else "cross-dataset",
                      "match": "identical" if (i, j) not in verified else "near-duplicate",
                      "score": round(score, 4), "gate": round(gate, 4),
                      "alignment": {"scale": [round(v, 3) for v in warp[:2]], "shift": [round(v, 3) for v in warp[2:]]},
                      "a_dataset": x.dataset, "a_key": x.key, "a_split": x.split,
                      "b_dataset": y.dataset, "b_key": y.key, "b_split": y.split})
    pairs.sort(key=lambda p: (-p["score"], p["a_dataset"], p["a_key"], p["b_dataset"], p["b_key"]))
    return pairs, len(todo)


@dataclass
class LeakageReport:
    """Near-duplicate pairs (``kind`` 'split': one dataset, two splits; 'cross-dataset': two datasets)."""

    min_score: float
    min_gate: float
    datasets: dict[str, dict[str, Any]]
    verified: int = 0
    pairs: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None  # where :meth:`write` put the JSON report

    @property
    def clean(self) -> bool:
        return not self.pairs

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("path")
        doc["method"] = (f"detail structure (top-hat minus black-hat, {DETAIL_KERNEL} px at {ANALYSIS_SIZE} px, "
                         f"local RMS) correlated after affine alignment (ECC); candidates by a {GATE_SIZE}x"
                         f"{GATE_SIZE} crop-view gate; see medprep.prep.leakage")
        return doc

    def write(self, path: str | os.PathLike) -> str:
        """Write the full report (every pair) as JSON to ``path``; later tables name it. Raises ReportError when
        it cannot be written there."""
        try:
            atomic_write(path, dumps(self.to_json()))
        except OSError as e:
            raise ReportError(f"cannot write the leakage report to {path}: {e}; pass --report FILE.json somewhere "
                              f"writable") from e
        self.path = str(path)
        return self.path

    def table(self, limit: int = 40) -> str:
        """Human-readable summary: the datasets compared, pair counts per dataset/split pair, the closest pairs,
        and the path of the written report."""
        lines = [f"leakage check: fine structure after alignment, score >= {self.min_score:g} "
                 f"({self.verified} candidate pairs verified):"]
        lines += [f"  {name}: {d['images']} images ({', '.join(f'{s} {n}' for s, n in d['splits'].items())})"
                  for name, d in self.datasets.items()]
        if self.clean:
            lines.append("  no near-duplicate pairs across splits or datasets")
        else:
            groups: dict[tuple[str, ...], int] = {}
            for p in self.pairs:
                g = (p["kind"], f"{p['a_dataset']} {p['a_split']}", f"{p['b_dataset']} {p['b_split']}")
                groups[g] = groups.get(g, 0) + 1
            lines.append(f"  {len(self.pairs)} near-duplicate pairs:")
            lines += [f"    {n:6d}  {kind:13s} {a}  <->  {b}" for (kind, a, b), n in sorted(groups.items())]
            lines.append(f"  {'score':>5s}  {'kind':13s} {'sample A':44s} sample B")
            for p in self.pairs[:limit]:
                lines.append(f"  {p['score']:5.3f}  {p['kind']:13s} "
                             f"{p['a_key'] + ' (' + p['a_split'] + ')':44s} {p['b_key']} ({p['b_split']})")
            if len(self.pairs) > limit:
                more = len(self.pairs) - limit
                lines.append(f"  ... {more} more in {self.path}" if self.path else f"  ... {more} more not shown")
        if self.path:
            lines.append(f"  report: {self.path}")
        return "\n".join(lines)


def check(roots: Sequence[str | os.PathLike | BuiltDataset], min_score: float = DEFAULT_MIN_SCORE,
          focus: int | None = None, workers: int = 1, min_gate: float = DEFAULT_MIN_GATE) -> LeakageReport:
    """Compare every image of the built datasets ``roots`` with every other; with ``focus`` (an index into
    ``roots``) only pairs involving that dataset are reported (``medprep build --check-against``). ``workers``:
    processes reading shards and verifying candidates (1: this process)."""
    for name, value in (("--min-score", min_score), ("min_gate", min_gate)):
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"{name} {value}: expected a correlation in -1..1 (measured: copies >= 0.5, distinct "
                             f"images <= 0.16; default {DEFAULT_MIN_SCORE if name == '--min-score' else min_gate})")
    if workers < 1:
        raise ValueError(f"--workers {workers}: expected a number of worker processes >= 1")
    opened = open_datasets(list(roots))
    labels = _labels(opened)
    items: list[Item] = []
    summary = {}
    with _Pool(workers) as pool:
        for ds, label in zip(opened, labels):
            got = _describe(ds, label, pool)
            items += got
            splits = {s: sum(i.split == s for i in got) for s in ds.manifest.splits()}
            summary[label] = {"root": ds.root, "manifest_sha256": ds.manifest_sha256, "images": len(got),
                              "splits": splits}
        pairs, verified = _find_pairs(items, min_score, min_gate, labels[focus] if focus is not None else None, pool)
    return LeakageReport(min_score, min_gate, summary, verified, pairs)


def check_build(out: str | os.PathLike, others: Sequence[str | os.PathLike], min_score: float = DEFAULT_MIN_SCORE,
                workers: int = 1) -> LeakageReport:
    """The leakage check of ``medprep build --check-against``: the new build against ``others`` (and its own
    splits), written to ``<out>/leakage.json``."""
    report = check([out, *others], min_score, focus=0, workers=workers)
    report.write(join(out, REPORT))
    return report


def default_report_path(roots: Iterable[str | os.PathLike | BuiltDataset]) -> str:
    """Where ``medprep leakage`` writes its report without ``--report``: ``leakage.json`` in the first dataset."""
    return join(open_datasets(next(iter(roots)))[0].root, REPORT)


__all__ = ["ANALYSIS_SIZE", "DEFAULT_MIN_GATE", "DEFAULT_MIN_SCORE", "DETAIL_KERNEL", "GATE_SIZE", "REPORT", "Item",
           "LeakageReport", "ReportError", "candidates", "check", "check_build", "default_report_path", "describe",
           "describe_dataset", "detail", "gate_views", "grey", "structure_score", "verify_pairs"]
