"""The teacher feature store format (zarr v3) and its read-only reader: all a student needs to read features.

Layout of ``<store>/<run>`` (``V`` = view suffix: "" for the identity view, "_hflip" for the flipped view)::

    featuresV     (N, C, H, W)  float16 | uint16 (bfloat16 bits) | float32 | int8; one chunk per sample inside
                                zarr shards of ``shard_samples`` samples
    scaleV        (N, C)        float16 per-channel scale of int8 features: x = q * scale
    keys          (N, L)        uint8: the UTF-8 bytes of each sample key, zero-padded to the longest (L bytes)
    valid_hw      (N, 2)        int32 rows, columns of the valid (not padded) region, in embedding cells from the
                                top-left corner
    valid_x_hflip (N, 2)        int32 [x0, x1) valid columns of the hflip view (its rows: valid_hw[:, 0])
    done          (N,)          bool resume ledger, set for a shard only after all its data is written

Only standard zarr v3 data types and codecs, so zarr-python and tensorstore read every array: each chunk is
``bytes`` (little endian) -> the run's codec (none by default, ``blosc`` lz4 or ``zstd``: the ``codec`` attr) ->
``crc32c``, so damage is detected on read. Each array's attrs say its
logical dtype and how to decode it (:func:`array_attrs`). Fill values are never written as data, so a missing
chunk is told apart from real values: NaN for float features and scales (bfloat16: the bits 0x7FC0, a NaN),
-128 for int8 features (the encoder writes [-127, 127]), -1 for ``valid_hw``. Unless the run's
``keep_padding`` attr is true, cells outside the valid region are stored as 0 (compressed away by lz4 or zstd, so
the bytes per sample follow the image's aspect).

The group's attrs record everything the features depend on, ``format`` (written last: a run without it was not
finished being created) and ``feature_shape``. Every array is chunked so that zarr shard ``s`` (samples
``[s * shard_samples, (s + 1) * shard_samples)``) is owned by exactly one writer. The writer lives in
``medprep.distill.store``; this module imports neither torch nor the cache pipeline.

Format history: ``medprep-teacher-v1`` stored keys as a zarr ``string`` array (tensorstore cannot read it),
features uncompressed with their padding and fill value 0, no checksums; it is still read (a missing chunk reads as
zeros there, undetected), never written or resumed.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Sequence, TypeVar

import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from .chunks import ChunkError, ChunkFiles
from .kernels import CHECKSUM, NONFINITE, SIZE, convert, copy_scale, decode_chunk
from .errors import MedprepError, NotFound
from .fsio import fs_and_path
from .runattrs import DTYPES, STORED, VIEWS, RunAttrs, check_arrays, check_attrs, upgrade

FORMAT = "medprep-teacher-v2"
#: older formats this reader still reads (never written)
READABLE = (FORMAT, "medprep-teacher-v1")
#: fill value of the stored features: never written as data, so it marks a missing chunk
FILL: dict[str, float | int] = {"float16": float("nan"), "int8": -128, "bfloat16": 0x7FC0, "float32": float("nan")}
#: how to get float32 values from each stored feature dtype (written to the features' attrs)
DECODE: dict[str, str] = {
    "float16": "x = float32(features)",
    "float32": "x = features",
    "bfloat16": "x = (uint32(features) << 16) reinterpreted as float32 (features hold the bfloat16 bits)",
    "int8": "x = float32(features) * float32(scale)[..., None, None] (scale: same sample, per channel)",
}
#: the bytes-to-bytes codec choices of a run's chunks (``--codec``; each followed by a crc32c checksum): standard zarr
#: v3 codecs only (blosc-lz4: blosc with lz4, level 5, no shuffle)
CODECS = ("blosc-lz4", "zstd-1", "zstd-3", "none")
#: the codec of a new run, chosen by measurement (``benchmarks/features.py``, README "Feeding a student"): an
#: uncompressed chunk is checked and converted in one pass, near the raw-record floor; compressed ones need a decode
#: pass first (blosc-lz4 ~2.5x, zstd ~10x the read time) and save only the zero padding (15-30% of the bytes)
CODEC = "none"

_Reader = TypeVar("_Reader", bound="FeatureReader")


class DamagedStore(MedprepError, ValueError):
    """Stored data that cannot be trusted: a checksum mismatch, a missing chunk of a finished sample, NaN/Inf."""


def compressors(codec: str = CODEC) -> list:
    """The bytes-to-bytes codecs of every array of a run: ``codec`` (one of :data:`CODECS`), then a crc32c
    checksum."""
    if codec not in CODECS:
        raise ValueError(f"unknown --codec {codec!r}: expected one of {CODECS}")
    if codec == "none":
        return [Crc32cCodec()]
    if codec == "blosc-lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"), Crc32cCodec()]
    return [ZstdCodec(level=int(codec.removeprefix("zstd-"))), Crc32cCodec()]


def array_attrs(name: str, dtype: str, keep_padding: bool) -> dict[str, Any]:
    """The attrs of array ``name`` of a run with feature ``dtype``: what the stored values mean and how to decode
    them, for readers without medprep."""
    view = "hflip" if name in ("features_hflip", "scale_hflip") else "identity"
    name = name.removesuffix(suffix(view))
    if name == "features":
        return {"logical_dtype": dtype, "stored_as": STORED[dtype], "decode": DECODE[dtype],
                "axes": ["sample", "channel", "row", "column"],
                "padding": "encoder output" if keep_padding else "0 outside the valid region (valid_hw)",
                "missing": f"a chunk never written reads as the fill value {FILL[dtype]!r}"}
    return {
        "scale": {"logical_dtype": "float16", "decode": DECODE["int8"], "axes": ["sample", "channel"]},
        "keys": {"logical_dtype": "utf-8 string", "stored_as": "uint8",
                 "decode": "bytes(row).rstrip(b'\\x00').decode('utf-8')"},
        "valid_hw": {"logical_dtype": "int32", "axes": ["sample", "rows|columns"],
                     "meaning": "features[i, :, :rows, :columns] see image content (identity view); the rest is "
                                "padding"},
        "valid_x_hflip": {"logical_dtype": "int32", "axes": ["sample", "x0|x1"],
                          "meaning": "features_hflip[i, :, :valid_hw[i, 0], x0:x1] see image content"},
        "done": {"logical_dtype": "bool", "meaning": "the sample's features are written (resume ledger)"},
    }[name]


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


def encode_keys(keys: list[str]) -> np.ndarray:
    """Sample keys as the ``(N, L)`` uint8 array of their zero-padded UTF-8 bytes."""
    raw = np.asarray([k.encode() for k in keys] or [b""], dtype="S")
    return raw.view(np.uint8).reshape(len(raw), raw.dtype.itemsize)[:len(keys)]


def decode_keys(stored: np.ndarray) -> list[str]:
    """The keys of an ``(N, L)`` uint8 ``keys`` array (v1: a zarr ``string`` array)."""
    if stored.dtype.kind in "OTU":  # medprep-teacher-v1
        return [str(k) for k in stored]
    return [k.decode() for k in np.ascontiguousarray(stored).view(f"S{stored.shape[1]}").ravel().tolist()]


def decode(stored: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Stored features (``(..., C, H, W)``) back to float32 (``scale``: the int8 per-channel scale, else None)."""
    if dtype == "int8":
        return stored.astype(np.float32) * scale.astype(np.float32)[..., None, None]
    if dtype == "bfloat16":  # bfloat16 is the top half of a float32: exact
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)


def unsound(stored: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Per sample (leading axis of ``(B, C, H, W)`` stored features): whether it holds NaN/Inf or fill values."""
    flat = stored.reshape(len(stored), -1)
    if dtype == "int8":
        return (flat == FILL["int8"]).any(axis=1) | ~np.isfinite(scale.reshape(len(scale), -1)).all(axis=1)
    if dtype == "bfloat16":  # exponent bits all set: Inf or NaN
        return ((flat & 0x7F80) == 0x7F80).any(axis=1)
    return ~np.isfinite(flat).all(axis=1)


def _missing(stored: np.ndarray, dtype: str) -> bool:
    """Whether one sample's stored features are all the fill value (its chunk is absent)."""
    fill = FILL[dtype]
    return bool(np.isnan(stored).all()) if isinstance(fill, float) else bool((stored == fill).all())


def _rows(files: ChunkFiles, rows: Sequence[int]) -> list[np.ndarray | None]:
    """Rows ``rows`` (along the first axis) of an array read by whole chunks; None where the chunk is absent."""
    per = files.chunk_shape[0]
    chunks = files.read_many([(int(i) // per,) + (0,) * (len(files.chunk_shape) - 1) for i in rows])
    return [None if c is None else c[int(i) % per] for i, c in zip(rows, chunks)]


#: why a sample read by :func:`~medprep.manifests.kernels.decode_chunk` is unsound, by its status
WHY = {CHECKSUM: "cannot be read (its chunk fails its crc32c checksum: damaged bytes)",
       NONFINITE: "holds NaN or Inf features",
       SIZE: "cannot be read (its chunk does not hold one sample of the run's feature shape and dtype)"}


def _open_root(url: str, mode: str = "r") -> zarr.Group:
    try:
        return zarr.open_group(zarr_location(url), mode=mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"no teacher store at {url}: create it with 'medprep cache-teacher'") from None


def _runs(root: zarr.Group) -> list[str]:
    with warnings.catch_warnings():  # the lock file of a run being written (.<run>.lock) is no zarr object
        warnings.filterwarnings("ignore", r"Object at \.[^/]*\.lock is not recognized")
        return sorted(name for name, _ in root.groups())


def runs(url: str) -> list[str]:
    """Names of the runs (groups) of the teacher store at ``url``, sorted; finished or not."""
    return _runs(_open_root(url))


class FeatureReader:
    """One run group of a teacher feature store, read-only (see the module docstring for the layout).

    Reads raise :class:`DamagedStore` naming the sample key and the run when a chunk fails its checksum, when a
    finished sample's chunk is missing, or when features are NaN/Inf.
    """

    def __init__(self, group: zarr.Group, url: str, run: str):
        self.group, self.url, self.run = group, url, run
        self._pid = os.getpid()  # the process whose event loop the group's store is bound to
        self.attrs: dict[str, Any] = upgrade(dict(group.attrs))
        self.format = self.attrs.get("format")
        if self.format is None:
            raise ValueError(f"{url}/{run} is not a finished medprep teacher store (no format attr: its creation was "
                             f"interrupted, or it is not a medprep store); rerun 'medprep cache-teacher' to create it")
        if self.format not in READABLE:
            raise ValueError(
                f"{url}/{run} has the store format {self.format!r}; this medprep reads {list(READABLE)}: use the "
                f"medprep that wrote it (or a newer one), or rerun 'medprep cache-teacher' into a new store"
            )
        where = f"{url}/{run}"
        self.schema: RunAttrs = check_attrs(self.attrs, where)
        self.dtype: str = self.schema.dtype
        self.views: list[str] = list(self.schema.views)
        self.shard_samples: int = self.schema.shard_samples
        self._arrays: dict[str, zarr.Array] = check_arrays(group, self.schema, where)
        self._files: dict[str, ChunkFiles | None] = {}
        self.n: int = self.array("keys").shape[0]
        self.nshards = -(-self.n // self.shard_samples)

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
            raise NotFound(f"{url} has no run {run!r}; runs present: {present}")
        return cls(root[run], url, run)

    def array(self, name: str) -> zarr.Array:
        """Array ``name`` of the run, opened once per process: a forked process (a DataLoader worker) opens the
        run again, since an object store's client belongs to the event loop of the process that opened it."""
        if self._pid != os.getpid():
            mode = "r" if self.group.store.read_only else "a"
            self.group, self._pid = _open_root(self.url, mode)[self.run], os.getpid()
            self._arrays = check_arrays(self.group, self.schema, f"{self.url}/{self.run}")
        if name not in self._arrays:
            raise NotFound(f"{self.url}/{self.run} has no array {name!r} (arrays: {sorted(self._arrays)})")
        return self._arrays[name]

    def shard_slice(self, s: int) -> slice:
        """Sample slice of zarr shard ``s``."""
        return slice(s * self.shard_samples, min((s + 1) * self.shard_samples, self.n))

    def indices(self, s: int) -> range:
        """Sample indices of zarr shard ``s``."""
        return range(self.n)[self.shard_slice(s)]

    def done(self) -> np.ndarray:
        """Per sample: whether its features are written (the resume ledger, read now)."""
        return self._get("done", slice(None))

    def done_shards(self) -> list[bool]:
        """Per zarr shard: whether it is finished."""
        done = self.done()
        return [bool(done[self.shard_slice(s)].all()) for s in range(self.nshards)]

    def keys(self) -> list[str]:
        """Sample keys, in source order."""
        keys = decode_keys(self._get("keys", slice(None)))
        if "" in keys:
            raise DamagedStore(f"{self.url}/{self.run}/keys is missing key {keys.index('')} (a lost chunk): "
                               f"{self._advice()}")
        return keys

    def read(self, index: int | slice | np.ndarray, view: str = "identity") -> np.ndarray:
        """Float32 features of sample(s) ``index`` (int8 and bfloat16 decoded); raises :class:`DamagedStore`."""
        decoded, problems = self._read(index, view)
        if problems:
            self._raise(problems, view)
        return decoded

    def problems(self, index: slice | np.ndarray, view: str = "identity") -> list[tuple[int, str]]:
        """``(row, what is wrong)`` for each damaged or unfinished sample of ``index`` (checks, never raises)."""
        return self._read(index, view)[1]

    def stored(self, rows: Sequence[int], view: str = "identity") -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Samples ``rows`` as stored: features ``(C, H, W)`` in the stored dtype (read-only) and the int8 scale
        (float16 ``(C,)``, else None). Checksums are checked and an absent chunk raises (:class:`DamagedStore` for a
        done sample, naming its key and the run); the values are not (:meth:`read_into` checks them).

        A local v2 run is read straight from its chunk files (:class:`ChunkFiles`: the shard index finds each
        chunk, rows of one zarr shard share one index read); other stores through zarr.
        """
        files = self._chunk_files(view)
        if files is None:
            return self._stored_by_zarr(rows, view)
        features, scales = files
        try:
            values = _rows(features, rows)
            scale = [None] * len(rows) if scales is None else _rows(scales, rows)
        except ChunkError as e:  # find which samples
            problems = [(int(i), why) for i in rows if (why := self._unreadable(int(i), view))]
            self._raise(problems or [(int(rows[0]), f"cannot be read ({e})")], view)
        absent = [int(i) for i, v, s in zip(rows, values, scale) if v is None or (self.dtype == "int8" and s is None)]
        if absent:
            done = self.done()
            self._raise([(i, "is marked done but its chunk is missing" if done[i] else "is not cached yet")
                         for i in absent], view)
        return list(zip(values, scale))

    def read_into(self, rows: Sequence[int], view: str, out: np.ndarray, scale_out: np.ndarray | None = None,
                  at: Sequence[int] | None = None) -> None:
        """Samples ``rows`` decoded into ``out[at]`` (``out``: ``(B, C, H, W)``; ``at``: by default ``0, 1, ...``):
        float32 (int8 times its scale, bfloat16 widened), or the stored dtype (bfloat16 as any 2-byte dtype; int8
        with its float16 scale into ``scale_out`` ``(B, C)``). Every chunk's crc32c is checked and every value for
        NaN/Inf; raises :class:`DamagedStore` naming the samples and the run.

        An uncompressed local run (``codec`` none) is checked and converted in one pass per sample
        (:func:`~medprep.manifests.kernels.decode_chunk`); others are decoded first (:meth:`stored`).
        """
        at = range(len(rows)) if at is None else at
        files = self._chunk_files(view)
        if files is not None and files[0].plain and files[0].chunk_shape[0] == 1:  # a chunk per sample
            problems = self._decode_plain(files, rows, view, out, scale_out, at)
        else:
            problems = []
            for b, i, (values, scale) in zip(at, rows, self.stored(rows, view)):
                if scale_out is not None:
                    scale_out[b] = scale
                if convert(values, scale, self.dtype, out[b]):
                    problems.append((int(i), WHY[NONFINITE]))
        if problems:
            self._raise(problems, view)

    def _decode_plain(self, files: tuple[ChunkFiles, ChunkFiles | None], rows: Sequence[int], view: str,
                      out: np.ndarray, scale_out: np.ndarray | None, at: Sequence[int]) -> list[tuple[int, str]]:
        """:meth:`read_into` of an uncompressed local run: ``(row, what is wrong)`` of each unsound sample."""
        features, scales = files
        try:
            values = features.encoded_many([(int(i), 0, 0, 0) for i in rows])
            scale = [None] * len(rows) if scales is None else scales.encoded_many(  # a zarr shard's int8 scales
                [(int(i) // scales.chunk_shape[0], 0) for i in rows])
        except ChunkError as e:  # a damaged shard index or file: find which samples
            return [(int(i), why) for i in rows if (why := self._unreadable(int(i), view))] or [
                (int(rows[0]), f"cannot be read ({e})")]
        absent = [int(i) for i, v, s in zip(rows, values, scale) if v is None or (scales is not None and s is None)]
        if absent:
            done = self.done()
            return [(i, "is marked done but its chunk is missing" if done[i] else "is not cached yet") for i in absent]
        problems = []
        for b, i, v, s in zip(at, rows, values, scale):
            if scales is None:
                status = decode_chunk(v, self.dtype, out[b])
            elif scale_out is None:
                status = decode_chunk(v, self.dtype, out[b], s, int(i) % scales.chunk_shape[0])
            else:  # the stored int8 values and their float16 scale
                status = decode_chunk(v, self.dtype, out[b]) or copy_scale(s, int(i) % scales.chunk_shape[0],
                                                                           scale_out[b])
            if status:
                problems.append((int(i), WHY[status]))
        return problems

    def _chunk_files(self, view: str) -> tuple[ChunkFiles, ChunkFiles | None] | None:
        """The chunk files of the view's features (and int8 scale), or None when only zarr reads them."""
        if view not in self.views:
            raise NotFound(f"view {view!r} is not in {self.url}/{self.run} (views cached: {self.views})")
        features = self._files_of(f"features{suffix(view)}")
        scale = self._files_of(f"scale{suffix(view)}") if self.dtype == "int8" else None
        return None if features is None or (self.dtype == "int8" and scale is None) else (features, scale)

    def _files_of(self, name: str) -> ChunkFiles | None:
        """Array ``name``'s chunk files, or None when only zarr reads them (remote store, format v1, other
        codecs, chunks that split a row)."""
        if name not in self._files:
            array = self.array(name)
            files = ChunkFiles.of(array) if self.format == FORMAT else None
            whole_rows = files is not None and files.chunk_shape[1:] == array.shape[1:]  # as the writer chunks
            self._files[name] = files if whole_rows else None
        return self._files[name]

    def _stored_by_zarr(self, rows: Sequence[int], view: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """:meth:`stored` through zarr: one request per sample, a missing chunk found by its fill values."""
        out, problems = [], []
        done = None
        for i in (int(i) for i in rows):
            try:
                values = self.array(f"features{suffix(view)}")[i]
                scale = self.array(f"scale{suffix(view)}")[i] if self.dtype == "int8" else None
            except (ValueError, RuntimeError):
                problems.append((i, self._unreadable(i, view)))
                continue
            if self.format == FORMAT and (_missing(values, self.dtype) or
                                          (scale is not None and np.isnan(scale).all())):
                done = self.done() if done is None else done
                problems.append((i, "is marked done but its chunk is missing" if done[i] else "is not cached yet"))
            out.append((values, scale))
        if problems:
            self._raise(problems, view)
        return out

    def valid_mask(self, i: int, view: str = "identity") -> np.ndarray:
        """Boolean ``(H, W)`` mask of the embedding cells that see image content (not padding)."""
        _, h, w = self.schema.feature_shape
        vh, vw = (int(v) for v in self._get("valid_hw", i))
        x0, x1 = (int(v) for v in self._get("valid_x_hflip", i)) if view == "hflip" else (0, vw)
        if min(vh, x0, x1) < 0:
            raise DamagedStore(f"{self.url}/{self.run}: the valid region of sample {self.keys()[i]!r} is missing "
                               f"(a lost chunk): {self._advice()}")
        why = self._outside(i, view, vh, vw, x0, x1)
        if why:
            raise DamagedStore(f"{self.url}/{self.run}: {why}: {self._advice()}")
        mask = np.zeros((h, w), dtype=bool)
        mask[:vh, x0:x1] = True
        return mask

    def region_problems(self) -> list[tuple[int, str]]:
        """``(row, what is wrong)`` for each sample whose recorded valid region lies outside the feature grid."""
        hw = self._get("valid_hw", slice(None))
        flip = self._get("valid_x_hflip", slice(None)) if "hflip" in self.views else None
        out = []
        for i, (vh, vw) in enumerate(hw.tolist()):
            x0, x1 = flip[i].tolist() if flip is not None else (0, vw)
            if min(vh, vw, x0, x1) >= 0:  # -1: not written yet
                why = self._outside(i, "identity", vh, vw, 0, vw) or self._outside(i, "hflip", vh, vw, x0, x1)
                if why:
                    out.append((i, why))
        return out

    def _outside(self, i: int, view: str, vh: int, vw: int, x0: int, x1: int) -> str:
        """Why the valid region of sample ``i`` in ``view`` is not inside the feature grid ("" if it is)."""
        _, h, w = self.schema.feature_shape
        if vh <= h and vw <= w and 0 <= x0 <= x1 <= w:
            return ""
        name, found = ("valid_x_hflip", [x0, x1]) if view == "hflip" else ("valid_hw", [vh, vw])
        return (f"{name} of sample {self.keys()[i]!r} (row {i}) is {found}, expected a region inside the {h} x {w} "
                f"feature grid (rows <= {h}, columns <= {w}, x0 <= x1)")

    def _get(self, name: str, index: Any) -> np.ndarray:
        files = self._files_of(name) if isinstance(index, (int, np.integer)) else None
        try:
            if files is None:
                return self.array(name)[index]
            row = _rows(files, [index])[0]  # one row of a local array: straight from its chunk file
            return np.full(files.chunk_shape[1:], self.array(name).fill_value, files.dtype) if row is None else row
        except ChunkError as e:
            raise DamagedStore(f"{self.url}/{self.run}/{name} cannot be read ({e}): {self._advice()}") from e
        except (ValueError, RuntimeError) as e:  # zarr: checksum mismatch, undecodable chunk
            raise DamagedStore(f"{self.url}/{self.run}/{name} cannot be read ({e}): {self._advice()}") from e

    def _read(self, index: int | slice | np.ndarray, view: str) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
        sfx = suffix(view)
        if view not in self.views:
            raise NotFound(f"view {view!r} is not in {self.url}/{self.run} (views cached: {self.views})")
        features = self.array(f"features{sfx}")
        scale = self.array(f"scale{sfx}") if self.dtype == "int8" else None
        try:
            stored = features[index]
            scales = None if scale is None else scale[index]
        except (ValueError, RuntimeError):  # zarr: checksum mismatch, undecodable chunk; find which samples
            rows = np.arange(self.n)[index].reshape(-1)
            return None, [(int(i), why) for i in rows if (why := self._unreadable(int(i), view))]
        decoded = decode(stored, scales, self.dtype)
        one = np.ndim(index) == 0 and not isinstance(index, slice)
        bad = unsound(stored[None] if one else stored, None if scales is None else scales[None] if one else scales,
                      self.dtype)
        if not bad.any():
            return decoded, []
        rows = np.arange(self.n)[index].reshape(-1)
        done = self.done()
        out = []
        for j in np.flatnonzero(bad):
            s = stored if one else stored[j]
            out.append((int(rows[j]), "is not cached yet" if not done[rows[j]] else
                        "is marked done but its chunk is missing" if _missing(s, self.dtype) else
                        "holds NaN or Inf features"))
        return decoded, out

    def _unreadable(self, i: int, view: str) -> str:
        """Why sample ``i`` cannot be read ("" if it can)."""
        names = [f"features{suffix(view)}"] + ([f"scale{suffix(view)}"] if self.dtype == "int8" else [])
        for name in names:
            try:
                self.array(name)[i]
            except (ValueError, RuntimeError) as e:
                return f"cannot be read from {name} ({e})"
        return ""

    def _raise(self, problems: list[tuple[int, str]], view: str) -> None:
        keys = self.keys()
        i, why = problems[0]
        more = f" (and {len(problems) - 1} more samples)" if len(problems) > 1 else ""
        where = f"sample {keys[i]!r} (row {i}) of teacher store {self.url}, run {self.run!r}, view {view!r}"
        if why == "is not cached yet":
            raise ValueError(f"{where} {why}{more}: rerun 'medprep cache-teacher' to finish the run")
        raise DamagedStore(f"{where} {why}{more}: {self._advice()}")

    def _advice(self) -> str:
        return (f"the store is damaged; 'medprep check-teacher {self.url} --run {self.run}' lists every damaged "
                f"sample; restore the store from a copy, or delete {self.url}/{self.run} and rerun "
                f"'medprep cache-teacher'")


__all__ = ["CODEC", "CODECS", "DECODE", "DTYPES", "FILL", "FORMAT", "READABLE", "STORED", "VIEWS", "DamagedStore",
           "FeatureReader", "array_attrs", "compressors", "decode", "decode_keys", "encode_keys", "in_fraction", "runs",
           "suffix", "unsound", "zarr_location"]
