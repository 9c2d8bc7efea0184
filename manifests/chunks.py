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
    """One mapped object: the file identity it was mapped for (inode, size, mtime) and its checked shard index."""

    __slots__ = ("ident", "mapped", "index")

    def __init__(self, ident: tuple[int, int, int], mapped: mmap.mmap):
        self.ident, self.mapped, self.index = ident, mapped, None


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
        self._mapped: OrderedDict[str, _Mapped] = OrderedDict()
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
        out: list[np.ndarray | None] = []
        index: tuple[str, np.ndarray | None, mmap.mmap | None] = ("", None, None)
        for c in coords:
            key = self.array.metadata.encode_chunk_key(tuple(i // n for i, n in zip(c, self.per_object)))
            if key != index[0]:
                index = (key, *self._index(key))
            _, entries, mapped = index
            if entries is None:
                out.append(None)
                continue
            local = 0
            for i, n in zip(c, self.per_object):  # the inner chunk's place in the shard index (C order)
                local = local * n + i % n
            offset, nbytes = (int(v) for v in entries[local])
            if offset == MISSING and nbytes == MISSING:
                out.append(None)
                continue
            if offset + nbytes > len(mapped):
                raise ChunkError(f"{self.root / key}: chunk {c} lies beyond the end of the file (truncated)")
            out.append(self._decode(np.frombuffer(mapped, np.uint8, nbytes, offset), key))
        return out

    def _index(self, key: str) -> tuple[np.ndarray | None, mmap.mmap | None]:
        """The ``(offset, nbytes)`` rows of shard object ``key`` (one row spanning the file when unsharded) and its
        mapping; ``(None, None)`` when the object does not exist. The index is checked once per mapping."""
        held = self._map(key)
        if held is None:
            return None, None
        if held.index is None:
            held.index = self._check_index(key, held.mapped)
        return held.index, held.mapped

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
            self._mapped[path] = held
            if len(self._mapped) > MAPPED:
                self._mapped.popitem(last=False)  # unmapped once no array views it
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
        return {k: v for k, v in self.__dict__.items() if k not in ("_mapped", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _mapped=OrderedDict(), _lock=threading.Lock())


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
