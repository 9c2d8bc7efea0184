"""Reading raw samples (entry name -> bytes) from the tar shards of built datasets, with webdataset's tar iterator."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from webdataset.tariterators import group_by_keys, tar_file_iterator

from medprep.manifests import BuiltDataset, fs_and_path, open_dataset

Source = str | os.PathLike | BuiltDataset


@dataclass(frozen=True)
class Shard:
    """One shard of one source dataset."""

    url: str
    nsamples: int
    source: int  # index into the list of sources
    modality_id: int


def open_sources(sources: Source | Sequence[Source]) -> list[BuiltDataset]:
    """Open one or several built datasets (folders, fsspec URLs, their manifest.json, or opened ones)."""
    if isinstance(sources, (str, os.PathLike, BuiltDataset)):
        sources = [sources]
    out = []
    for s in sources:
        if not isinstance(s, BuiltDataset) and str(s).endswith("manifest.json"):
            s = str(s)[: -len("manifest.json")]
        out.append(open_dataset(s))
    if not out:
        raise ValueError("no sources given: expected one or more built dataset folders (holding manifest.json)")
    return out


def split_shards(datasets: list[BuiltDataset], split: str) -> list[Shard]:
    """The shards of ``split`` of every dataset, in source then manifest order; a source without it is an error."""
    shards = []
    for i, ds in enumerate(datasets):
        entries = ds.manifest.shards_of(split)
        if not entries or not sum(e.nsamples for e in entries):
            raise ValueError(f"{ds.root} ({ds.name}) has no {split!r} samples; its splits are "
                             f"{', '.join(ds.manifest.splits()) or 'none'}")
        shards += [Shard(ds.url(e.name), e.nsamples, i, ds.manifest.modality_id) for e in entries if e.nsamples]
    return shards


def read_samples(url: str, entries: set[str] | None = None, stride: int = 1, offset: int = 0
                 ) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar shard, in tar order: dicts with ``__key__``, ``__url__`` and the bytes of ``entries``
    (all when None). Only samples whose index is ``offset`` modulo ``stride`` are read; other members are skipped
    without reading their data."""
    state = {"key": None, "index": -1}

    def select(fname: str) -> bool:
        key, _, ext = fname.partition(".")
        if key != state["key"]:
            state["key"] = key
            state["index"] += 1
        return state["index"] % stride == offset and (entries is None or ext in entries)

    fs, path = fs_and_path(url)
    with fs.open(path, "rb") as f:
        files = ({**item, "__url__": url} for item in tar_file_iterator(f, select_files=select))
        yield from group_by_keys(files)
