"""``MedShardsIndexed``: map-style random access to the samples of built datasets, through their wids indexes.

Each split's ``<split>.wids.json`` (wids-shard-index-v1: shard urls relative to the index, sample counts) gives the
global sample numbering; a shard's member offsets are read from its tar headers the first time it is touched, and a
sample is then fetched with one ranged read. Works on local paths and fsspec URLs, in DataLoader workers too.
"""

from __future__ import annotations

import bisect
import tarfile
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from medprep.manifests import WIDS_KIND, fs_and_path, join, read_json

from .augment import Augment
from .fields import Decoder
from .reader import Source, open_sources

INDEXED_FIELDS = ("image", "mask", "patch32", "modality_id", "key", "meta")


class MedShardsIndexed(torch.utils.data.Dataset):
    """Sample ``i`` of ``split`` over one or more built datasets (sources in order, then wids index order).

    Same fields, normalisations and augmentations as ``MedShards``; an augmentation draws from a generator seeded
    by ``(seed, i)``, so ``ds[i]`` is reproducible.
    """

    def __init__(self, sources: Source | Sequence[Source], split: str = "test",
                 fields: Iterable[str] = INDEXED_FIELDS, *, normalize: str = "sam",
                 augment: Augment | None = None, seed: int = 0):
        self.datasets = open_sources(sources)
        self.split, self.seed = split, seed
        self.decoder = Decoder(fields, normalize, augment)
        self.entries = self.decoder.entries
        self.shards: list[tuple[str, int]] = []  # (url, nsamples)
        for ds in self.datasets:
            url = ds.wids_url(split)
            try:
                index = read_json(url)
            except FileNotFoundError:
                raise FileNotFoundError(f"no wids index {url}: {ds.root} has splits "
                                        f"{', '.join(ds.manifest.splits()) or 'none'}") from None
            if index.get("__kind__") != WIDS_KIND:
                raise ValueError(f"{url}: __kind__ is {index.get('__kind__')!r}, expected {WIDS_KIND!r}")
            base = url.rsplit("/", 1)[0]
            self.shards += [(join(base, s["url"]), int(s["nsamples"])) for s in index["shardlist"] if s["nsamples"]]
        self.starts = np.cumsum([0] + [n for _, n in self.shards]).tolist()
        self._members: dict[int, list[dict[str, tuple[int, int]]]] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, i: int) -> tuple[int, int]:
        """``(shard number, sample number in the shard)`` of global index ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples of split {self.split!r}")
        i %= len(self)
        s = bisect.bisect_right(self.starts, i) - 1
        return s, i - self.starts[s]

    def members(self, shard: int) -> list[dict[str, tuple[int, int]]]:
        """Per sample of ``shard``: entry name -> (byte offset, size), plus ``__key__``; read once, then cached."""
        if shard not in self._members:
            url, expected = self.shards[shard]
            fs, path = fs_and_path(url)
            samples: list[dict[str, Any]] = []
            with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for m in tar:
                    if not m.isreg():
                        continue
                    key, _, ext = m.name.partition(".")
                    if not samples or samples[-1]["__key__"] != key:
                        samples.append({"__key__": key})
                    samples[-1][ext.lower()] = (m.offset_data, m.size)
            if len(samples) != expected:
                raise ValueError(f"{url} holds {len(samples)} samples but its wids index says {expected}: the "
                                 f"shard was changed after the build; run 'medprep verify' and rebuild")
            self._members[shard] = samples
        return self._members[shard]

    def raw(self, i: int) -> dict[str, Any]:
        """Sample ``i`` as raw entries (bytes) of the requested fields, with ``__key__`` and ``__url__``."""
        shard, j = self.locate(i)
        info = self.members(shard)[j]
        url = self.shards[shard][0]
        wanted = [(e, info[e]) for e in sorted(self.entries) if e in info]
        lo = min(off for _, (off, _) in wanted)
        hi = max(off + size for _, (off, size) in wanted)
        fs, path = fs_and_path(url)
        blob = fs.cat_file(path, start=lo, end=hi)
        out: dict[str, Any] = {"__key__": info["__key__"], "__url__": url}
        for e, (off, size) in wanted:
            out[e] = blob[off - lo: off - lo + size]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, i % max(len(self), 1)]) if self.decoder.augment else None
        return self.decoder(self.raw(i), rng)

    def keys(self) -> list[str]:
        """Sample keys in index order (reads every shard's tar headers)."""
        return [m["__key__"] for s in range(len(self.shards)) for m in self.members(s)]
