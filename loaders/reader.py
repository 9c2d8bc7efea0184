"""Reading raw samples (entry name -> bytes) from the shards of built datasets, through ``medprep.manifests``: every
read gets its checks (shard size, member names, sample counts against the manifest, the dataset's generation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Iterator

from medprep.manifests import BuiltDataset, ShardEntry, ShardIndex, open_dataset
from medprep.manifests.dataset import DatasetRef, open_datasets


@dataclass(frozen=True)
class Shard:
    """One shard of one source dataset."""

    dataset: BuiltDataset
    entry: ShardEntry
    source: int  # index into the list of sources
    modality_id: int

    @property
    def url(self) -> str:
        return self.dataset.url(self.entry.name)

    @property
    def nsamples(self) -> int:
        return self.entry.nsamples

    def read(self, entries: Collection[str] | None = None, start: int = 0, stop: int | None = None
             ) -> Iterator[dict[str, Any]]:
        """Raw samples ``start`` to ``stop`` of this shard (see ``BuiltDataset.read_shard``)."""
        return self.dataset.read_shard(self.entry, entries, start=start, stop=stop)

    def index(self) -> ShardIndex:
        """The offset index of this shard (its tar headers only)."""
        return self.dataset.index_shard(self.entry)

    def fetch(self, index: ShardIndex, j: int, entries: Collection[str] | None = None) -> dict[str, Any]:
        """Raw sample ``j`` of this shard, with one ranged read through its ``index``."""
        return self.dataset.fetch(self.entry, index, j, entries)


def roots(datasets: list[BuiltDataset]) -> str:
    """How a reader's repr names its sources: the root of one, the list of several."""
    return repr(datasets[0].root) if len(datasets) == 1 else repr([ds.root for ds in datasets])


def split_shards(datasets: list[BuiltDataset], split: str) -> list[Shard]:
    """The shards of ``split`` of every dataset, in source then manifest order; a source without it is an error."""
    shards = []
    for i, ds in enumerate(datasets):
        entries = ds.manifest.shards_of(split)
        if not entries or not sum(e.nsamples for e in entries):
            raise ValueError(f"{ds.root} ({ds.name}) has no {split!r} samples; its splits are "
                             f"{', '.join(ds.manifest.splits()) or 'none'}")
        shards += [Shard(ds, e, i, ds.manifest.modality_id) for e in entries if e.nsamples]
    return shards


def read_samples(url: str, entries: Collection[str] | None = None, stride: int = 1, offset: int = 0
                 ) -> Iterator[dict[str, Any]]:
    """Raw samples of the shard at ``url`` (a shard inside a built dataset folder), in tar order: dicts with
    ``__key__``, ``__url__`` and the bytes of ``entries`` (all when None). Only samples whose index is ``offset``
    modulo ``stride`` are read; other members are skipped without reading their data."""
    root, _, name = str(url).rstrip("/").rpartition("/")
    return open_dataset(root).read_shard(name, entries, stride, offset)


__all__ = ["Shard", "DatasetRef", "open_datasets", "read_samples", "roots", "split_shards"]
