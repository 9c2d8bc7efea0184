"""The writer of the teacher feature store: encode features, create (or resume) a run, write whole zarr shards.

The layout, the dtype table, decoding and reading are the format module's
(:mod:`medprep.manifests.features`); a :class:`FeatureStore` is a reader that can also write.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import zarr

from medprep.manifests.features import DTYPES, FORMAT, STORED, FeatureReader, suffix, zarr_location

#: attrs that record where things were, not what the features depend on
LOCATION_ATTRS = ("checkpoint", "medprep_version")


def identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attrs that decide the stored values (drops locations and versions, keeps hashes)."""
    out = {k: v for k, v in attrs.items() if k not in LOCATION_ATTRS + ("format", "feature_shape")}
    if isinstance(out.get("source"), dict):
        out["source"] = {k: v for k, v in out["source"].items() if k not in ("url", "subset_file")}
    return out


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


class FeatureStore(FeatureReader):
    """One run group of a teacher feature store, for writing (reading: see :class:`FeatureReader`)."""

    @classmethod
    def create_or_open(cls, url: str, run: str, keys: list[str], attrs: dict[str, Any],
                       shape: Callable[[], tuple[int, int, int]]) -> FeatureStore:
        """Open run ``run`` for writing, creating it on first use; refuse a run made with other parameters.

        ``attrs`` must hold ``dtype``, ``views`` and ``shard_size``; it is compared with the run's attrs except
        for locations and versions (see :func:`identity`). ``shape()`` gives ``(C, H, W)`` when creating.
        A run whose creation was interrupted (no ``format`` attr yet) is created again.
        """
        root = zarr.open_group(zarr_location(url), mode="a")
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
            g.create_array(f"features{sfx}", shape=(n, *shape), dtype=STORED[attrs["dtype"]],
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
