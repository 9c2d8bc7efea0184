"""Near-duplicate images across built datasets: a 64-bit DCT perceptual hash of every normalised image, compared by
Hamming distance, each candidate pair confirmed by the correlation of 32x32 grey thumbnails (look-alike images of
one modality can share a hash neighbourhood; copies correlate near 1). Reports pairs that sit in two splits of one
dataset (split leakage) or in two datasets (an "unseen" test set that is not unseen).

Images are read from the built shards through ``medprep.manifests`` and cropped to their valid region (``longest``
builds are padded), so builds with other sizes and resize modes compare.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from medprep.manifests import BuiltDataset, ShardEntry, atomic_write, dumps, open_dataset

DEFAULT_THRESHOLD = 10  # of 64 bits; resized and JPEG re-encoded copies land at 0-6
DEFAULT_MIN_CORRELATION = 0.9  # copies correlate above 0.95; distinct look-alikes of one modality stay below
REPORT = "leakage.json"


def phash(image: np.ndarray) -> int:
    """64-bit perceptual hash: grey, area-resized to 32x32, 2D DCT, the 8x8 lowest frequencies thresholded at
    their median (DC excluded from the median)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def thumbnail(image: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 grey thumbnail (1024 floats): the dot product of two is their correlation."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    t = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / max(float(np.linalg.norm(t)), 1e-6)


@dataclass(frozen=True)
class Item:
    """One hashed sample of a built dataset."""

    dataset: str
    key: str
    split: str
    hash: int
    thumb: np.ndarray = field(repr=False, compare=False)


def _shard_items(ds: BuiltDataset, label: str, shard: ShardEntry) -> list[Item]:
    """Hash the images of one shard (streamed; an image is cropped to the ``valid_hw`` of its meta.json)."""
    return [_item(label, raw["__key__"], shard.split, raw)
            for raw in ds.read_shard(shard, ("image.png", "meta.json"))]


def _item(label: str, key: str, split: str, sample: dict[str, Any]) -> Item:
    if "image.png" not in sample:
        raise ValueError(f"{label}: sample {key} has no image.png; not a medprep shard")
    image = cv2.imdecode(np.frombuffer(sample["image.png"], np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{label}: sample {key}: image.png cannot be decoded")
    if "meta.json" in sample:
        h, w = json.loads(sample["meta.json"]).get("valid_hw", image.shape[:2])
        image = image[:h, :w]
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return Item(label, key, split, phash(rgb), thumbnail(rgb))


def hash_dataset(root: str | os.PathLike | BuiltDataset, label: str | None = None, workers: int = 0) -> list[Item]:
    """Perceptual hashes of every sample of a built dataset, in manifest order (shards hashed in parallel)."""
    ds = open_dataset(root)
    label = label or ds.name
    with ThreadPoolExecutor(max(1, workers or (os.cpu_count() or 1))) as pool:
        parts = list(pool.map(lambda s: _shard_items(ds, label, s), ds.manifest.shards))
    return [item for part in parts for item in part]


def _labels(datasets: Sequence[BuiltDataset]) -> list[str]:
    """Dataset names, made unique with their path where two builds of one dataset are compared."""
    names = [d.name for d in datasets]
    return [n if names.count(n) == 1 else f"{n}@{d.root}" for n, d in zip(names, datasets)]


@dataclass
class LeakageReport:
    """Near-duplicate pairs (``kind`` 'split': one dataset, two splits; 'cross-dataset': two datasets)."""

    threshold: int
    min_correlation: float
    datasets: dict[str, dict[str, Any]]
    pairs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.pairs

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, limit: int = 40) -> str:
        """Human-readable summary: the datasets compared, pair counts per dataset/split pair, the closest pairs."""
        lines = [f"leakage check: perceptual hash (64-bit DCT) within {self.threshold} bits and thumbnail "
                 f"correlation >= {self.min_correlation:g}:"]
        lines += [f"  {name}: {d['images']} images ({', '.join(f'{s} {n}' for s, n in d['splits'].items())})"
                  for name, d in self.datasets.items()]
        if self.clean:
            lines.append("  no near-duplicate pairs across splits or datasets")
            return "\n".join(lines)
        groups: dict[tuple[str, ...], int] = {}
        for p in self.pairs:
            g = (p["kind"], f"{p['a_dataset']} {p['a_split']}", f"{p['b_dataset']} {p['b_split']}")
            groups[g] = groups.get(g, 0) + 1
        lines.append(f"  {len(self.pairs)} near-duplicate pairs:")
        lines += [f"    {n:6d}  {kind:13s} {a}  <->  {b}" for (kind, a, b), n in sorted(groups.items())]
        lines.append(f"  {'bits':>4s} {'corr':>5s}  {'kind':13s} {'sample A':44s} sample B")
        for p in self.pairs[:limit]:
            lines.append(f"  {p['distance']:4d} {p['correlation']:5.3f}  {p['kind']:13s} "
                         f"{p['a_key'] + ' (' + p['a_split'] + ')':44s} {p['b_key']} ({p['b_split']})")
        if len(self.pairs) > limit:
            lines.append(f"  ... {len(self.pairs) - limit} more in the JSON report")
        return "\n".join(lines)


def find_pairs(items: Sequence[Item], threshold: int = DEFAULT_THRESHOLD,
               min_correlation: float = DEFAULT_MIN_CORRELATION, focus: str | None = None) -> list[dict[str, Any]]:
    """Pairs of ``items`` within ``threshold`` bits whose thumbnails correlate at least ``min_correlation``, that
    sit in two splits of one dataset or in two datasets (only pairs involving dataset ``focus`` when given),
    closest first."""
    if not items:
        return []
    h = np.array([i.hash for i in items], dtype=np.uint64)
    ds = np.array([i.dataset for i in items])
    sp = np.array([i.split for i in items])
    pairs = []
    block = 512
    for start in range(0, len(items), block):
        dist = np.bitwise_count(h[start: start + block, None] ^ h[None, :])
        for i, j in zip(*np.nonzero(dist <= threshold)):
            a, b = start + int(i), int(j)
            if b <= a or (ds[a] == ds[b] and sp[a] == sp[b]):
                continue
            if focus is not None and focus not in (ds[a], ds[b]):
                continue
            x, y = items[a], items[b]
            corr = float(x.thumb @ y.thumb)
            if corr < min_correlation:
                continue
            if focus is not None and y.dataset == focus and x.dataset != focus:
                x, y = y, x  # the focused dataset first
            pairs.append({"kind": "split" if x.dataset == y.dataset else "cross-dataset",
                          "distance": int(dist[i, j]), "correlation": round(corr, 4),
                          "a_dataset": x.dataset, "a_key": x.key, "a_split": x.split,
                          "b_dataset": y.dataset, "b_key": y.key, "b_split": y.split})
    pairs.sort(key=lambda p: (p["distance"], p["a_dataset"], p["a_key"], p["b_dataset"], p["b_key"]))
    return pairs


def check(roots: Sequence[str | os.PathLike | BuiltDataset], threshold: int = DEFAULT_THRESHOLD,
          min_correlation: float = DEFAULT_MIN_CORRELATION, focus: int | None = None,
          workers: int = 0) -> LeakageReport:
    """Compare every image of the built datasets ``roots`` with every other; with ``focus`` (an index into
    ``roots``) only pairs involving that dataset are reported (``medprep build --check-against``)."""
    if not 0 <= threshold < 64:
        raise ValueError(f"--threshold {threshold}: expected 0..63 bits of a 64-bit hash")
    if not -1.0 <= min_correlation <= 1.0:
        raise ValueError(f"--min-correlation {min_correlation}: expected a correlation in -1..1 (-1 disables it)")
    opened = [open_dataset(r) for r in roots]
    labels = _labels(opened)
    items: list[Item] = []
    summary = {}
    for ds, label in zip(opened, labels):
        got = hash_dataset(ds, label, workers)
        items += got
        splits = {s: sum(i.split == s for i in got) for s in ds.manifest.splits()}
        summary[label] = {"root": ds.root, "manifest_sha256": ds.manifest_sha256, "images": len(got), "splits": splits}
    pairs = find_pairs(items, threshold, min_correlation, labels[focus] if focus is not None else None)
    return LeakageReport(threshold, min_correlation, summary, pairs)


def check_build(out: str | os.PathLike, others: Sequence[str | os.PathLike], threshold: int = DEFAULT_THRESHOLD,
                min_correlation: float = DEFAULT_MIN_CORRELATION, workers: int = 0) -> LeakageReport:
    """The leakage check of ``medprep build --check-against``: the new build against ``others`` (and its own
    splits), written to ``<out>/leakage.json``."""
    report = check([out, *others], threshold, min_correlation, focus=0, workers=workers)
    atomic_write(os.path.join(out, REPORT), dumps(report.to_json()))
    return report


__all__ = ["DEFAULT_MIN_CORRELATION", "DEFAULT_THRESHOLD", "Item", "LeakageReport", "check", "check_build",
           "find_pairs", "hash_dataset", "phash", "thumbnail"]
