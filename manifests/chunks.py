"""Whole chunks of a zarr v3 array on a local disk, read straight from its files: no event loop, no copy.

zarr-python reads a chunk through its asyncio loop (thread hand-offs), decodes into fresh buffers and scans for fill
values; for one whole chunk of a local array none of that is needed. :class:`ChunkFiles` memory-maps the chunk (or
shard) objects, finds an inner chunk of a shard through the shard index (the ``sharding_indexed`` codec: an
``(offset, nbytes)`` uint64 pair per inner chunk in C order, at the end or start of the object, with its own crc32c;
``2**64 - 1`` twice marks a chunk never written) and undoes the recorded bytes-to-bytes codecs: ``crc32c`` (checked),
``zstd``, ``blosc``. Uncompressed chunks come back as read-only views of the mapped file.

Only what medprep writes is read this way; :meth:`ChunkFiles.of` returns None for anything else (remote stores,
other codecs, big-endian data), and the caller reads through zarr.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.bytes import Endian
from zarr.storage import LocalStore

from .errors import MedprepError
from .kernels import crc32c

#: an index entry of a chunk never written
MISSING = 2**64 - 1
#: shard objects kept mapped per array (a mapping costs address space only)
MAPPED = 64


class ChunkError(MedprepError, ValueError):
    """A chunk (or shard index) that fails its checksum or cannot be decoded."""


class _Mapped:
    """One mapped object: the file identity it was mapped for (inode, size, mtime), its checked shard index and the
    chunks found in it so far (their coordinates)."""

    __slots__ = ("ident", "mapped", "index", "found")

    def __init__(self, ident: tuple[int, int, int], mapped: mmap.mmap):
        self.ident, self.mapped, self.index = ident, mapped, None
        self.found: list[tuple[int, ...]] = []


class ChunkFiles:
    """Read whole (inner) chunks of one local zarr v3 array by their grid coordinates."""

    def __init__(self, array: zarr.Array, root: Path, shard: ShardingCodec | None, codecs: tuple[Any, ...]):
        self.array, self.root = array, root
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        grid = array.metadata.chunk_grid.chunk_shape
        self.chunk_shape: tuple[int, ...] = tuple(shard.chunk_shape) if shard else tuple(grid)
        self.per_object = tuple(g // c for g, c in zip(grid, self.chunk_shape))  # inner chunks per shard object
        self.chunk_values = math.prod(self.chunk_shape)
        self.sharded = shard is not None
        self.index_at_end = shard is None or shard.index_location.value == "end"
        self.decoders = [_decoder(c) for c in reversed(codecs)]
        #: whether a chunk is its values and then their crc32c (no compression)
        self.plain = len(codecs) == 1 and isinstance(codecs[0], Crc32cCodec)
        self._mapped: OrderedDict[str, _Mapped] = OrderedDict()
        self._found: dict[tuple[int, ...], np.ndarray] = {}  # chunk coordinates -> bytes, in the objects mapped
        self._lock = threading.Lock()  # the mappings are shared by the threads reading through this object

    @classmethod
    def of(cls, array: zarr.Array) -> ChunkFiles | None:
        """A reader of ``array``'s chunks, or None when it is not on a local disk or uses codecs read only by zarr
        (anything but ``bytes`` little-endian followed by crc32c / zstd / blosc, inside or without sharding)."""
        store = array.store_path.store
        if not isinstance(store, LocalStore):
            return None
        codecs = tuple(array.metadata.codecs)
        shard = None
        if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
            shard = codecs[0]
            index = tuple(shard.index_codecs)
            if not (len(index) == 2 and isinstance(index[0], BytesCodec) and isinstance(index[1], Crc32cCodec)
                    and index[0].endian in (None, Endian.little)):
                return None
            codecs = tuple(shard.codecs)
        if not codecs or not isinstance(codecs[0], BytesCodec) or codecs[0].endian not in (None, Endian.little):
            return None
        if not all(isinstance(c, (Crc32cCodec, ZstdCodec, BloscCodec)) for c in codecs[1:]):
            return None
        return cls(array, Path(store.root) / array.store_path.path, shard, codecs[1:])

    def read(self, coords: tuple[int, ...]) -> np.ndarray | None:
        """Chunk ``coords`` (inner-chunk grid coordinates) as stored: a read-only array of the chunk shape, or None
        when it was never written. Raises :class:`ChunkError` on a checksum mismatch or undecodable bytes."""
        return self.read_many([coords])[0]

    def read_many(self, coords: list[tuple[int, ...]]) -> list[np.ndarray | None]:
        """:meth:`read` of several chunks; chunks of one shard object share one index read."""
        return [None if raw is None else self._decode(raw, key) for raw, key in self._encoded(coords)]

    def encoded_many(self, coords: list[tuple[int, ...]]) -> list[np.ndarray | None]:
        """The bytes of chunks ``coords`` as stored (uint8, read-only views of the mapped file: the encoded values
        and, last, their crc32c; not checked), or None for a chunk never written; chunks of one shard object share
        one index read. :meth:`read_many` decodes them; uncompressed ones (:attr:`plain`) are for
        :func:`~medprep.manifests.kernels.decode_chunk`, which checks and converts in one pass.

        A chunk found once is found again without looking at its file while its object stays mapped: a reader sees
        a chunk as it was when first read (zarr replaces a shard object whole; medprep writes a done one never
        again)."""
        out = [self._found.get(c) for c in coords]
        unknown = [k for k, raw in enumerate(out) if raw is None]
        for k, (raw, _) in zip(unknown, self._encoded([coords[k] for k in unknown]) if unknown else ()):
            out[k] = raw
        return out

    def _encoded(self, coords: list[tuple[int, ...]]) -> list[tuple[np.ndarray | None, str]]:
        """Each chunk's stored bytes (None: never written) and the key of its object."""
        out: list[tuple[np.ndarray | None, str]] = []
        index: tuple[str, _Mapped | None] = ("", None)
        for c in coords:
            key = self.array.metadata.encode_chunk_key(tuple(i // n for i, n in zip(c, self.per_object)))
            if key != index[0]:
                index = (key, self._indexed(key))
            held = index[1]
            if held is None:
                out.append((None, key))
                continue
            local = 0
            for i, n in zip(c, self.per_object):  # the inner chunk's place in the shard index (C order)
                local = local * n + i % n
            offset, nbytes = (int(v) for v in held.index[local])
            if offset == MISSING and nbytes == MISSING:
                out.append((None, key))
                continue
            if offset + nbytes > len(held.mapped):
                raise ChunkError(f"{self.root / key}: chunk {c} lies beyond the end of the file (truncated)")
            raw = np.frombuffer(held.mapped, np.uint8, nbytes, offset)
            with self._lock:
                if self._mapped.get(f"{self.root}{os.sep}{key}") is held:  # still mapped: remember where it is
                    held.found.append(c)
                    self._found[c] = raw
            out.append((raw, key))
        return out

    def _indexed(self, key: str) -> _Mapped | None:
        """The mapping of shard object ``key`` with its ``(offset, nbytes)`` rows (one row spanning the file when
        unsharded) checked, once per mapping; None when the object does not exist."""
        held = self._map(key)
        if held is not None and held.index is None:
            held.index = self._check_index(key, held.mapped)
        return held

    def _check_index(self, key: str, mapped: mmap.mmap) -> np.ndarray:
        if not self.sharded:
            return np.array([[0, len(mapped)]], dtype=np.uint64)
        n = int(np.prod(self.per_object))
        size = 16 * n + 4
        if len(mapped) < size:
            raise ChunkError(f"{self.root / key}: {len(mapped)} bytes, too short for its shard index ({size} bytes)")
        start = len(mapped) - size if self.index_at_end else 0
        raw = np.frombuffer(mapped, np.uint8, size, start)
        if crc32c(raw[:-4]) != int(raw[-4:].view("<u4")[0]):
            raise ChunkError(f"{self.root / key}: the shard index fails its crc32c checksum")
        return raw[:-4].view("<u8").reshape(n, 2)

    def _map(self, key: str) -> _Mapped | None:
        """The mapping of object ``key``, kept while the file is the same (inode, size, mtime); None if absent."""
        path = f"{self.root}{os.sep}{key}"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            held = self._mapped.get(path)
            if held is not None and held.ident == ident:
                self._mapped.move_to_end(path)
                return held
        if st.st_size == 0:
            return None
        with open(path, "rb") as f:  # zarr replaces objects whole (temp file + rename): a mapping never shrinks
            held = _Mapped(ident, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        with self._lock:
            for gone in [self._mapped.pop(path, None)] + [
                    self._mapped.popitem(last=False)[1] for _ in range(len(self._mapped) + 1 - MAPPED)]:
                for c in gone.found if gone else ():  # unmapped once no array views it
                    self._found.pop(c, None)
            self._mapped[path] = held
        return held

    def _decode(self, raw: np.ndarray, key: str) -> np.ndarray:
        data: np.ndarray | bytes = raw
        for decoder in self.decoders:
            try:
                data = decoder(data)
            except ChunkError as e:
                raise ChunkError(f"{self.root / key}: {e}") from None
            except Exception as e:  # a codec's own error on damaged bytes
                raise ChunkError(f"{self.root / key}: undecodable chunk ({e})") from None
        arr = np.frombuffer(data, self.dtype)
        if arr.size != self.chunk_values:
            raise ChunkError(f"{self.root / key}: a chunk of {arr.size} values, expected {self.chunk_shape}")
        return arr.reshape(self.chunk_shape)

    def __getstate__(self) -> dict[str, Any]:  # mappings and lock are made again where it is unpickled
        return {k: v for k, v in self.__dict__.items() if k not in ("_mapped", "_found", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _mapped=OrderedDict(), _found={}, _lock=threading.Lock())


def _crc32c(data: np.ndarray | bytes) -> np.ndarray | bytes:
    """The bytes without their trailing crc32c, after checking it."""
    body = np.frombuffer(data, np.uint8)
    if len(body) < 4 or crc32c(body[:-4]) != int(body[-4:].view("<u4")[0]):
        raise ChunkError("the chunk fails its crc32c checksum (damaged bytes)")
    return body[:-4]


def _decoder(codec: Any) -> Any:
    """The bytes -> bytes function undoing ``codec``."""
    if isinstance(codec, Crc32cCodec):
        return _crc32c
    if isinstance(codec, ZstdCodec):
        return Zstd().decode
    return Blosc().decode


__all__ = ["ChunkError", "ChunkFiles", "MISSING"]
