"""The teacher feature store: one zarr v3 group per run, written shard by shard, resumable.

Layout of ``<store>/<run>`` (``V`` = view suffix: "" for the identity view, "_hflip" for the flipped view)::

    featuresV     (N, C, H, W)  float16 | bfloat16 (stored as uint16 bits) | float32 | int8; one chunk per
                                sample inside shard objects of ``shard_size`` samples; no compression
    scaleV        (N, C)        float16 per-channel scale of int8 features (x ~= q * scale)
    keys          (N,)          sample keys, in source order
    valid_hw      (N, 2)        valid (not padded) region, in embedding cells from the top-left corner
    valid_x_hflip (N, 2)        [x0, x1) valid columns of the hflip view
    done          (N,)          resume ledger, set for a shard only after all its data is written

Every array is chunked so that zarr shard ``s`` (samples ``[s * shard_size, (s + 1) * shard_size)``) is owned
by exactly one writer: no read-modify-write across writers.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import zarr
from fsspec.implementations.local import LocalFileSystem

from medprep.manifests import fs_and_path

FORMAT = "medprep-teacher-v1"
DTYPES = ("float16", "int8", "bfloat16", "float32")
VIEWS = ("identity", "hflip")
_STORED = {"float16": "float16", "int8": "int8", "bfloat16": "uint16", "float32": "float32"}


#: attrs that record where things were, not what the features depend on
LOCATION_ATTRS = ("checkpoint", "medprep_version")


def identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attrs that decide the stored values (drops locations and versions, keeps hashes)."""
    out = {k: v for k, v in attrs.items() if k not in LOCATION_ATTRS + ("format", "feature_shape")}
    if isinstance(out.get("source"), dict):
        out["source"] = {k: v for k, v in out["source"].items() if k not in ("url", "subset_file")}
    return out


def _location(url: str) -> str:
    """What zarr opens: a plain path for local files (also ``file://`` URLs), else the fsspec URL."""
    fs, path = fs_and_path(url)
    return path if isinstance(fs, LocalFileSystem) else url


def suffix(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: expected one of {VIEWS}")
    return "" if view == "identity" else f"_{view}"


def encode(x: torch.Tensor, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode float features ``(B, C, H, W)`` for storage; return the stored array and the int8 scale (or None)."""
    x = x.float()
    if dtype == "float16":
        return x.half().numpy(), None
    if dtype == "float32":
        return x.numpy(), None
    if dtype == "bfloat16":
        return x.bfloat16().view(torch.int16).numpy().view(np.uint16), None
    if dtype == "int8":
        amax = x.abs().amax(dim=(2, 3))
        scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).half()
        q = torch.round(x / scale.float()[:, :, None, None]).clamp_(-127, 127).to(torch.int8)
        return q.numpy(), scale.numpy()
    raise ValueError(f"unknown --dtype {dtype!r}: expected one of {DTYPES}")


def decode(stored: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Stored features (``(..., C, H, W)``) back to float32."""
    if dtype == "int8":
        return stored.astype(np.float32) * scale.astype(np.float32)[..., None, None]
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(stored).view(np.int16)).view(torch.bfloat16).float().numpy()
    return stored.astype(np.float32)


class FeatureStore:
    """One run group of a teacher feature store (see the module docstring for the layout)."""

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
    def open(cls, url: str, run: str | None = None, mode: str = "r") -> "FeatureStore":
        """Open run ``run`` of the store at ``url`` (``run=None``: the store's only run)."""
        try:
            root = zarr.open_group(_location(url), mode=mode)
        except FileNotFoundError:
            raise FileNotFoundError(f"no teacher store at {url}: create it with 'medprep cache-teacher'") from None
        runs = sorted(name for name, _ in root.groups())
        if run is None:
            if len(runs) != 1:
                raise ValueError(f"{url} holds runs {runs}: say which one with run=/--run")
            run = runs[0]
        if run not in runs:
            raise KeyError(f"{url} has no run {run!r}; runs present: {runs}")
        return cls(root[run], url, run)

    @classmethod
    def create_or_open(cls, url: str, run: str, keys: list[str], attrs: dict[str, Any],
                       shape: Callable[[], tuple[int, int, int]]) -> "FeatureStore":
        """Open run ``run`` for writing, creating it on first use; refuse a run made with other parameters.

        ``attrs`` must hold ``dtype``, ``views`` and ``shard_size``; it is compared with the run's attrs except
        for locations and versions (see :func:`identity`). ``shape()`` gives ``(C, H, W)`` when creating.
        A run whose creation was interrupted (no ``format`` attr yet) is created again.
        """
        root = zarr.open_group(_location(url), mode="a")
        if run in root and root[run].attrs.get("format") == FORMAT:
            store = cls(root[run], url, run)
            old, new = identity(store.attrs), identity(attrs)
            diff = sorted(k for k in new if old.get(k) != new[k])
            if diff:
                lines = "; ".join(f"{k}: store has {old.get(k)!r}, this run {new[k]!r}" for k in diff)
                raise ValueError(
                    f"run {run!r} in {url} was cached with other parameters ({lines}); "
                    f"choose another --run or delete {url}/{run} to start over"
                )
            return store
        shape = tuple(shape())
        n, ss = len(keys), attrs["shard_size"]
        g = root.create_group(run, overwrite=True)
        for view in attrs["views"]:
            sfx = suffix(view)
            g.create_array(f"features{sfx}", shape=(n, *shape), dtype=_STORED[attrs["dtype"]],
                           chunks=(1, *shape), shards=(ss, *shape), compressors=None, fill_value=0)
            if attrs["dtype"] == "int8":
                g.create_array(f"scale{sfx}", shape=(n, shape[0]), dtype="float16", chunks=(ss, shape[0]),
                               compressors=None, fill_value=0)
        g.create_array("valid_hw", shape=(n, 2), dtype="int32", chunks=(ss, 2), fill_value=0)
        if "hflip" in attrs["views"]:
            g.create_array("valid_x_hflip", shape=(n, 2), dtype="int32", chunks=(ss, 2), fill_value=0)
        g.create_array("done", shape=(n,), dtype="bool", chunks=(ss,), fill_value=False)
        g.create_array("keys", shape=(n,), dtype=str, chunks=(max(n, 1),))[:] = np.asarray(keys, dtype=str)
        g.attrs.update({**attrs, "feature_shape": list(shape), "format": FORMAT})  # last: marks the run complete
        return cls(g, url, run)

    def indices(self, s: int) -> range:
        """Sample indices of zarr shard ``s``."""
        return range(self.n)[self.shard_slice(s)]

    def shard_slice(self, s: int) -> slice:
        return slice(s * self.shard_size, min((s + 1) * self.shard_size, self.n))

    def done_shards(self) -> list[bool]:
        """Per zarr shard: whether it is finished."""
        done = self.group["done"][:]
        return [bool(done[self.shard_slice(s)].all()) for s in range(self.nshards)]

    def write_shard(self, s: int, features: dict[str, torch.Tensor], valid_hw: np.ndarray,
                    valid_x_hflip: np.ndarray | None = None) -> None:
        """Write zarr shard ``s`` whole (features per view, valid regions), then mark it done."""
        sl = self.shard_slice(s)
        for view, x in features.items():
            stored, scale = encode(x, self.dtype)
            self.group[f"features{suffix(view)}"][sl] = stored
            if scale is not None:
                self.group[f"scale{suffix(view)}"][sl] = scale
        self.group["valid_hw"][sl] = valid_hw
        if valid_x_hflip is not None:
            self.group["valid_x_hflip"][sl] = valid_x_hflip
        self.group["done"][sl] = True

    def keys(self) -> list[str]:
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
