"""The writer of the teacher feature store: encode features, create (or resume) a run, write whole zarr shards.

The layout, the dtype table, decoding and reading are the format module's
(:mod:`medprep.manifests.features`); a :class:`FeatureStore` is a reader that can also write.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import zarr

from medprep.manifests.features import (CODEC, DTYPES, FILL, FORMAT, STORED, FeatureReader, array_attrs, compressors,
                                        encode_keys, suffix, unsound, zarr_location)

#: rows per chunk of the ``keys`` array
KEYS_CHUNK = 1 << 16
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

        ``attrs`` must hold ``dtype``, ``views`` and ``shard_samples`` (``codec``: :data:`CODEC` when absent); it is
        compared with the run's attrs except for locations and versions (see :func:`identity`). ``shape()`` gives
        ``(C, H, W)`` when creating. A run whose creation was interrupted (no ``format`` attr yet) is created again.
        """
        root = zarr.open_group(zarr_location(url), mode="a")
        old_format = root[run].attrs.get("format") if run in root else None
        if old_format not in (None, FORMAT):
            raise ValueError(
                f"run {run!r} in {url} has the store format {old_format!r}; this medprep writes {FORMAT!r} and "
                f"cannot add to it (medprep still reads it): cache into a new --run or a new store, or delete "
                f"{url}/{run} to start over"
            )
        if old_format == FORMAT:
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
        attrs = {**attrs, "codec": attrs.get("codec", CODEC)}
        n, ss, dtype = len(keys), attrs["shard_samples"], attrs["dtype"]
        pad = bool(attrs.get("keep_padding"))
        g = root.create_group(run, overwrite=True)

        def array(name: str, dims: tuple[int, ...], stored: str, fill: Any, **kw: Any) -> zarr.Array:
            return g.create_array(name, shape=dims, dtype=stored, fill_value=fill,
                                  compressors=compressors(attrs["codec"]),
                                  attributes=array_attrs(name, dtype, pad), **kw)

        for view in attrs["views"]:
            sfx = suffix(view)
            array(f"features{sfx}", (n, *shape), STORED[dtype], FILL[dtype], chunks=(1, *shape), shards=(ss, *shape))
            if dtype == "int8":
                array(f"scale{sfx}", (n, shape[0]), "float16", float("nan"), chunks=(ss, shape[0]))
        array("valid_hw", (n, 2), "int32", -1, chunks=(ss, 2))
        if "hflip" in attrs["views"]:
            array("valid_x_hflip", (n, 2), "int32", -1, chunks=(ss, 2))
        array("done", (n,), "bool", False, chunks=(ss,))
        stored_keys = encode_keys(keys)
        key_rows = max(min(n, KEYS_CHUNK), 1)
        array("keys", stored_keys.shape, "uint8", 0, chunks=(key_rows, stored_keys.shape[1]))[:] = stored_keys
        g.attrs.update({**attrs, "feature_shape": list(shape), "format": FORMAT})  # last: marks the run complete
        return cls(g, url, run)

    def write_shard(self, s: int, features: dict[str, torch.Tensor], valid_hw: np.ndarray,
                    valid_x_hflip: np.ndarray | None = None, skipped: np.ndarray | None = None) -> None:
        """Write zarr shard ``s`` whole (features per view, valid regions), then mark it done.

        Unless the run keeps the padding, cells outside each sample's valid region are stored as 0. Features that
        are NaN/Inf once encoded (e.g. beyond float16's range) are refused, naming the samples. ``skipped``: per
        sample, whether its image could not be read: its features and valid region are left as never written (the
        fill values) and it is not marked done.
        """
        sl = self.shard_slice(s)
        skip = np.zeros(sl.stop - sl.start, bool) if skipped is None else np.asarray(skipped, bool)
        if skip.any():  # whole-grid placeholders, so that nothing is zeroed; written as never written below
            _, h, w = self.schema.feature_shape
            valid_hw = np.where(skip[:, None], [h, w], valid_hw).astype(np.int32)
            if valid_x_hflip is not None:
                valid_x_hflip = np.where(skip[:, None], [0, w], valid_x_hflip).astype(np.int32)
        for view, x in features.items():
            if not self.attrs.get("keep_padding"):
                cols = valid_x_hflip if view == "hflip" else np.stack([0 * valid_hw[:, 1], valid_hw[:, 1]], 1)
                x = zero_padding(x, valid_hw[:, 0], cols)
            stored, scale = encode(x, self.dtype)
            bad = np.flatnonzero(unsound(stored, scale, self.dtype) & ~skip)
            if bad.size:
                keys = self.keys()
                overflow = "; values beyond +-65504 need --dtype bfloat16" if self.dtype == "float16" else ""
                raise ValueError(
                    f"the teacher's {view} features of {[keys[sl.start + j] for j in bad]} in {self.url}/{self.run} "
                    f"are NaN or Inf as {self.dtype}: check the checkpoint, the input images and --autocast{overflow}"
                )
            stored[skip] = FILL[self.dtype]
            self.array(f"features{suffix(view)}")[sl] = stored
            if scale is not None:
                scale[skip] = np.nan
                self.array(f"scale{suffix(view)}")[sl] = scale
        self.array("valid_hw")[sl] = np.where(skip[:, None], -1, valid_hw)
        if valid_x_hflip is not None:
            self.array("valid_x_hflip")[sl] = np.where(skip[:, None], -1, valid_x_hflip)
        self.array("done")[sl] = ~skip


def zero_padding(x: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` with 0 outside each sample's valid cells: rows ``[0, rows[b])``, columns
    ``[cols[b, 0], cols[b, 1])`` (a copy when anything is zeroed; ``x`` is left alone)."""
    h, w = x.shape[-2:]
    padded = [(b, int(r), int(c0), int(c1)) for b, (r, (c0, c1)) in enumerate(zip(rows, cols))
              if (r, c0, c1) != (h, 0, w)]
    if not padded:
        return x
    x = x.clone()
    for b, r, c0, c1 in padded:
        x[b, :, r:] = 0
        x[b, :, :, :c0] = 0
        x[b, :, :, c1:] = 0
    return x
