"""Manifest schema and readers/writers of built datasets: the contract between prep, loaders and distill."""

from .schema import (
    FAILURES,
    FORMAT,
    MANIFEST,
    SAMPLES,
    SPLITS,
    WIDS_KIND,
    BuiltDataset,
    Manifest,
    ShardEntry,
    open_dataset,
    wids_index,
)
from .store import atomic_write, dumps, fs_and_path, iter_jsonl, join, jsonl_bytes, read_json, sha256_bytes, sha256_file

__all__ = [
    "FAILURES", "FORMAT", "MANIFEST", "SAMPLES", "SPLITS", "WIDS_KIND", "BuiltDataset", "Manifest", "ShardEntry",
    "open_dataset", "wids_index", "atomic_write", "dumps", "fs_and_path", "iter_jsonl", "join", "jsonl_bytes",
    "read_json", "sha256_bytes", "sha256_file",
]
