"""The teacher feature store format (zarr v3) and its read-only reader: all a student needs to read features.

Layout of ``<store>/<run>`` (``V`` = view suffix: "" for the identity view, "_hflip" for the flipped view)::

    featuresV     (N, C, H, W)  float16 | bfloat16 (stored as uint16 bits) | float32 | int8; one chunk per
                                sample inside shard objects of ``shard_size`` samples; no compression
    scaleV        (N, C)        float16 per-channel scale of int8 features (x ~= q * scale)
    keys          (N,)          sample keys, in source order
    valid_hw      (N, 2)        valid (not padded) region, in embedding cells from the top-left corner
    valid_x_hflip (N, 2)        [x0, x1) valid columns of the hflip view
    done          (N,)          resume ledger, set for a shard only after all its data is written

The group's attrs record everything the features depend on, ``format`` (written last: a run without it was not
finished being created) and ``feature_shape``. Every array is chunked so that zarr shard ``s`` (samples
``[s * shard_size, (s + 1) * shard_size)``) is owned by exactly one writer. The writer lives in
``medprep.distill.store``; this module imports neither torch nor the cache pipeline.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem

from .store import fs_and_path

FORMAT = "medprep-teacher-v1"
DTYPES = ("float16", "int8", "bfloat16", "float32")
VIEWS = ("identity", "hflip")
#: numpy dtype each feature dtype is stored as (bfloat16 as its raw 16 bits)
STORED: dict[str, str] = {"float16": "float16", "int8": "int8", "bfloat16": "uint16", "float32": "float32"}

_Reader = TypeVar("_Reader", bound="FeatureReader")


def in_fraction(key: str, fraction: float, seed: int) -> bool:
    """Deterministic membership of ``key`` in a ``fraction`` subset, from ``(seed, key)`` alone.

    Shared by the SA-1B ``--fraction`` subset and the student-side choice of the hflip view.
    """
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
    return h < fraction * 2.0**64


def zarr_location(url: str) -> str:
    """What zarr opens: a plain path for local files (also ``file://`` URLs), else the fsspec URL."""
    fs, path = fs_and_path(url)
    return path if isinstance(fs, LocalFileSystem) else url


def suffix(view: str) -> str:
    """Array name suffix of ``view``: "" for identity, "_hflip" for the flipped view."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: expected one of {VIEWS}")
    return "" if view == "identity" else f"_{view}"


def decode(stored: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Stored features (``(..., C, H, W)``) back to float32 (``scale``: the int8 per-channel scale, else None)."""
    if dtype == "int8":
        return stored.astype(np.float32) * scale.astype(np.float32)[..., None, None]
    if dtype == "bfloat16":  # bfloat16 is the top half of a float32: exact
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)


def _open_root(url: str, mode: str = "r") -> zarr.Group:
    try:
        return zarr.open_group(zarr_location(url), mode=mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"no teacher store at {url}: create it with 'medprep cache-teacher'") from None


def _runs(root: zarr.Group) -> list[str]:
    return sorted(name for name, _ in root.groups())


def runs(url: str) -> list[str]:
    """Names of the runs (groups) of the teacher store at ``url``, sorted; finished or not."""
    return _runs(_open_root(url))


class FeatureReader:
    """One run group of a teacher feature store, read-only (see the module docstring for the layout)."""

    def __init__(self, group: zarr.Group, url: str, run: str):
        self.group, self.url, self.run = group, url, run
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("format") != FORMAT:
            raise ValueError(
                f"{url}/{run} is not a finished medprep teacher store (format {self.attrs.get('format')!r}, "
                f"expected {FORMAT!r}); rerun 'medprep cache-teacher' to create it"
            )
        self.dtype: str = self.attrs["dtype"]
        self.views: list[str] = self.attrs["views"]
        self.shard_size: int = self.attrs["shard_size"]
        self.n: int = group["keys"].shape[0]
        self.nshards = -(-self.n // self.shard_size)

    @classmethod
    def open(cls: type[_Reader], url: str, run: str | None = None, mode: str = "r") -> _Reader:
        """Open run ``run`` of the store at ``url`` (``run=None``: the store's only run; ``mode``: zarr's)."""
        root = _open_root(url, mode)
        present = _runs(root)
        if run is None:
            if len(present) != 1:
                raise ValueError(f"{url} holds runs {present}: say which one with run=/--run")
            run = present[0]
        if run not in present:
            raise KeyError(f"{url} has no run {run!r}; runs present: {present}")
        return cls(root[run], url, run)

    def shard_slice(self, s: int) -> slice:
        """Sample slice of zarr shard ``s``."""
        return slice(s * self.shard_size, min((s + 1) * self.shard_size, self.n))

    def indices(self, s: int) -> range:
        """Sample indices of zarr shard ``s``."""
        return range(self.n)[self.shard_slice(s)]

    def done(self) -> np.ndarray:
        """Per sample: whether its features are written (the resume ledger, read now)."""
        return self.group["done"][:]

    def done_shards(self) -> list[bool]:
        """Per zarr shard: whether it is finished."""
        done = self.done()
        return [bool(done[self.shard_slice(s)].all()) for s in range(self.nshards)]

    def keys(self) -> list[str]:
        """Sample keys, in source order."""
        return [str(k) for k in self.group["keys"][:]]

    def read(self, index: int | slice | np.ndarray, view: str = "identity") -> np.ndarray:
        """Float32 features of sample(s) ``index`` (int8 and bfloat16 decoded)."""
        sfx = suffix(view)
        if f"features{sfx}" not in self.group:
            raise KeyError(f"view {view!r} is not in {self.url}/{self.run} (views cached: {self.views})")
        stored = self.group[f"features{sfx}"][index]
        scale = self.group[f"scale{sfx}"][index] if self.dtype == "int8" else None
        return decode(stored, scale, self.dtype)

    def valid_mask(self, i: int, view: str = "identity") -> np.ndarray:
        """Boolean ``(H, W)`` mask of the embedding cells that see image content (not padding)."""
        _, h, w = self.attrs["feature_shape"]
        vh, vw = (int(v) for v in self.group["valid_hw"][i])
        x0, x1 = (int(v) for v in self.group["valid_x_hflip"][i]) if view == "hflip" else (0, vw)
        mask = np.zeros((h, w), dtype=bool)
        mask[:vh, x0:x1] = True
        return mask


__all__ = ["DTYPES", "FORMAT", "STORED", "VIEWS", "FeatureReader", "decode", "in_fraction", "runs", "suffix",
           "zarr_location"]
