"""The built-data format: the contract between prep (writer), loaders and distill (readers).

Manifest schema (``schema``), the tar shard writer, reader and offset index (``tar``), a built dataset and every
read of it with its integrity checks (``dataset``), ``verify``, the cards of a build and a teacher store (``card``),
file-system helpers (``fsio``), and ``MedprepError``, the base of every error medprep raises on purpose
(``errors``).
"""

from .dataset import BuiltDataset, GenerationError, open_dataset, open_datasets
from .errors import MedprepError, MissingDependency, NotFound
from .fsio import (
    atomic_write, dumps, fs_and_path, human_bytes, iter_jsonl, join, jsonl_bytes, read_json, sha256_bytes,
    sha256_file,
)
from .schema import (
    CORE_ENTRIES,
    FAILURES,
    FORMAT,
    MANIFEST,
    SAMPLES,
    SPLITS,
    WIDS_KIND,
    Manifest,
    ShardEntry,
    wids_index,
)
from .tar import MemberIndex, ShardError, ShardIndex, TarShard, tar_bytes
from .verify import Problem, VerifyReport, verify

__all__ = [
    "CORE_ENTRIES", "FAILURES", "FORMAT", "MANIFEST", "SAMPLES", "SPLITS", "WIDS_KIND", "BuiltDataset",
    "GenerationError", "Manifest", "MedprepError", "MemberIndex", "MissingDependency", "NotFound", "Problem",
    "ShardEntry", "ShardError", "ShardIndex", "TarShard", "VerifyReport", "open_dataset", "open_datasets",
    "tar_bytes", "verify", "wids_index", "atomic_write", "dumps",
    "fs_and_path", "human_bytes", "iter_jsonl", "join", "jsonl_bytes", "read_json", "sha256_bytes", "sha256_file",
]
