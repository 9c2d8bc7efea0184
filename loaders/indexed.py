"""``MedShardsIndexed``: map-style random access to the samples of built datasets, through their wids indexes.

Each split's ``<split>.wids.json`` (wids-shard-index-v1: shard urls relative to the index, sample counts) gives the
global sample numbering (checked against the manifest); a shard's offset index (``medprep.manifests``) is read from
its tar headers the first time it is touched, and a sample is then fetched with one ranged read, followed by a check
that the dataset was not replaced meanwhile. Works on local paths and fsspec URLs, in DataLoader workers too.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from medprep.manifests import BuiltDataset, ShardEntry, ShardIndex

from .augment import Augment
from .fields import recorded_decoder
from .prompts import Prompts
from .reader import DatasetRef, open_datasets, roots

class MedShardsIndexed(torch.utils.data.Dataset):
    """Sample ``i`` of ``split`` over one or more built datasets (sources in order, then wids index order).

    Same fields (default ``DEFAULT_FIELDS``), normalisations, augmentations and prompts as ``MedShards``; an
    augmentation and the box perturbation draw from a generator seeded by ``(seed, i)``, so ``ds[i]`` is
    reproducible.
    """

    def __init__(self, sources: DatasetRef | Sequence[DatasetRef], split: str = "test",
                 fields: Iterable[str] | None = None, *, normalize: str | None = None,
                 augment: Augment | None = None, prompts: Prompts | None = None, seed: int = 0):
        self.datasets = open_datasets(sources)
        self.split, self.seed = split, seed
        self.decoder = recorded_decoder(self.datasets, fields, normalize, augment, prompts)
        self.entries = self.decoder.entries
        self.shards: list[tuple[BuiltDataset, ShardEntry]] = [
            (ds, e) for ds in self.datasets for e in ds.wids_shards(split) if e.nsamples]
        self.starts = np.cumsum([0] + [e.nsamples for _, e in self.shards]).tolist()
        self._indexes: dict[int, ShardIndex] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def __repr__(self) -> str:
        return (f"MedShardsIndexed({roots(self.datasets)}, split={self.split!r}, samples={len(self)}, "
                f"shards={len(self.shards)}, fields={self.decoder.fields}, normalize={self.decoder.normalize!r})")

    def locate(self, i: int) -> tuple[int, int]:
        """``(shard number, sample number in the shard)`` of global index ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples of split {self.split!r}")
        i %= len(self)
        s = bisect.bisect_right(self.starts, i) - 1
        return s, i - self.starts[s]

    def index(self, shard: int) -> ShardIndex:
        """The offset index of shard number ``shard`` (its tar headers, checked against the manifest); read once,
        then cached."""
        if shard not in self._indexes:
            ds, entry = self.shards[shard]
            self._indexes[shard] = ds.index_shard(entry)
        return self._indexes[shard]

    def raw(self, i: int) -> dict[str, Any]:
        """Sample ``i`` as raw entries (bytes) of the requested fields, with ``__key__`` and ``__url__``."""
        shard, j = self.locate(i)
        ds, entry = self.shards[shard]
        return ds.fetch(entry, self.index(shard), j, self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        seeded = self.decoder.augment is not None or self.decoder.prompt_fields
        rng = np.random.default_rng([self.seed, i % max(len(self), 1)]) if seeded else None
        return self.decoder(self.raw(i), rng)

    def keys(self) -> list[str]:
        """Sample keys in index order (reads every shard's tar headers)."""
        return [k for s in range(len(self.shards)) for k in self.index(s).keys()]
