"""The manifest of a built dataset: the contract between ``prep`` (writer) and ``loaders``/``distill`` (readers).

A built dataset is a folder (or fsspec URL) holding::

    manifest.json          build parameters, medprep version, counts, per shard: name, split, nsamples, bytes, sha256
    samples.jsonl          one row per sample, in shard order: key, split, shard, source, hashes, stats
    failures.jsonl         one row per input that could not be converted, with the reason
    <split>-NNNNNN.tar     webdataset shards
    <split>.wids.json      the shard list of one split in the wids-shard-index-v1 format
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from . import store

FORMAT = "medprep-manifest-v1"
WIDS_KIND = "wids-shard-index-v1"
MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
FAILURES = "failures.jsonl"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ShardEntry:
    """One tar shard of a built dataset."""

    name: str
    split: str
    nsamples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """Parsed ``manifest.json``."""

    dataset: str
    modality: str
    modality_id: int
    medprep_version: str
    params: dict[str, Any]
    shards: list[ShardEntry]
    counts: dict[str, Any]
    split_report: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shards"] = [asdict(s) for s in self.shards]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        if d.get("format") != FORMAT:
            raise ValueError(f"not a medprep manifest: format is {d.get('format')!r}, expected {FORMAT!r}")
        d = dict(d)
        d["shards"] = [ShardEntry(**s) for s in d["shards"]]
        return cls(**d)

    def splits(self) -> list[str]:
        """Split names present, in canonical order (train, valid, test, then any other)."""
        present = {s.split for s in self.shards}
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    def shards_of(self, split: str | None = None) -> list[ShardEntry]:
        return [s for s in self.shards if split is None or s.split == split]

    def nsamples(self, split: str | None = None) -> int:
        return sum(s.nsamples for s in self.shards_of(split))


def wids_index(shards: list[ShardEntry], name: str) -> dict[str, Any]:
    """The wids-shard-index-v1 document for ``shards`` (urls relative to the index file)."""
    return {
        "__kind__": WIDS_KIND,
        "wids_version": 1,
        "name": name,
        "shardlist": [{"url": s.name, "nsamples": s.nsamples, "filesize": s.bytes} for s in shards],
    }


class BuiltDataset:
    """A built dataset at a local path or fsspec URL, read through its manifest."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root).rstrip("/")
        url = store.join(self.root, MANIFEST)
        try:
            raw = store.read_bytes(url)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no {MANIFEST} under {self.root}: expected a folder written by 'medprep build' "
                f"(a build that was interrupted has no manifest yet; rerun it to resume)"
            ) from None
        self.manifest_sha256 = store.sha256_bytes(raw)
        self.manifest = Manifest.from_json(json.loads(raw))

    @property
    def name(self) -> str:
        return self.manifest.dataset

    def url(self, name: str) -> str:
        return store.join(self.root, name)

    def shard_urls(self, split: str | None = None) -> list[str]:
        """URLs of the shards of ``split`` (all splits when None), in manifest order."""
        return [self.url(s.name) for s in self.manifest.shards_of(split)]

    def samples(self, split: str | None = None) -> Iterator[dict[str, Any]]:
        """Rows of ``samples.jsonl`` (optionally of one split), in shard order."""
        for row in store.iter_jsonl(self.url(SAMPLES)):
            if split is None or row["split"] == split:
                yield row

    def keys(self, split: str | None = None) -> list[str]:
        return [r["key"] for r in self.samples(split)]

    def failures(self) -> list[dict[str, Any]]:
        return list(store.iter_jsonl(self.url(FAILURES)))

    def wids_url(self, split: str) -> str:
        return self.url(f"{split}.wids.json")

    def verify(self) -> list[str]:
        """Check every shard's size and sha256 against the manifest; return the problems found (empty if none)."""
        problems = []
        fs, _ = store.fs_and_path(self.root)
        for s in self.manifest.shards:
            url = self.url(s.name)
            _, path = store.fs_and_path(url)
            if not fs.exists(path):
                problems.append(f"{s.name}: missing")
                continue
            size = fs.size(path)
            if size != s.bytes:
                problems.append(f"{s.name}: {size} bytes, manifest says {s.bytes}")
            elif store.sha256_file(url) != s.sha256:
                problems.append(f"{s.name}: sha256 differs from the manifest")
        for fname, key in ((SAMPLES, "samples_sha256"), (FAILURES, "failures_sha256")):
            if key in self.manifest.files and store.sha256_file(self.url(fname)) != self.manifest.files[key]:
                problems.append(f"{fname}: sha256 differs from the manifest")
        return problems


def open_dataset(root: str | os.PathLike | BuiltDataset) -> BuiltDataset:
    """Open a built dataset by path/URL (idempotent on an already opened one)."""
    return root if isinstance(root, BuiltDataset) else BuiltDataset(root)
