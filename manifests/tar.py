"""The tar format of built shards: the one writer (:class:`TarShard`; :class:`ShardWriter` rolls it over into
parts of bounded size), the one streaming reader and the one offset index.

A shard holds webdataset samples: members ``<key>.<entry>`` (a tar-safe key, then the entry name), the members of
one sample next to each other. Writing is deterministic (fixed mtime, owner and mode, sorted entries, the byte
layout of ``tarfile``), so the same samples give the same bytes. Reading checks what every reader relies on:
well-formed member names, every sample in one place, no entry twice, no member cut short, and (given the
manifest's count) the number of samples; a problem is a :class:`ShardError` naming the shard and the key.

The small generic :class:`MemberIndex` reads members of any tar in place (SA-1B downloads) without extracting.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Collection, Iterator, Mapping

from . import fsio
from .errors import MedprepError

TAR_MTIME = 0  # fixed member mtime (1970-01-01) for byte-identical rebuilds
MEMBER_MODE = 0o444
OWNER = "medprep"
KEY = re.compile(r"[A-Za-z0-9_-]+")  # a tar-safe sample key: no dots, no slashes, no spaces


class ShardError(MedprepError, ValueError):
    """A shard that does not hold what its dataset says: unreadable, cut short, renamed or damaged members, a
    sample count other than the manifest's."""


# ------------------------------------------------------------------------------------------------------- writing


def _header(name: str, size: int) -> bytes:
    """The tar header block(s) of a member: PAX format (an extended header only for names over 99 characters)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, MEMBER_MODE
    info.uname = info.gname = OWNER
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return tarfile.NUL * (-size % tarfile.BLOCKSIZE)


def _end(nbytes: int) -> bytes:
    """The end of an archive of ``nbytes`` member bytes: two zero blocks, padded to a whole record."""
    return tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-(nbytes + 2 * tarfile.BLOCKSIZE) % tarfile.RECORDSIZE))


class TarShard:
    """The shard writer: members ``<key>.<entry>`` in sorted entry order, fixed mtime/owner/mode.

    The member layout of ``webdataset.TarWriter``; headers come from ``tarfile.TarInfo`` and the bytes are laid out
    the way ``tarfile`` writes them (header, data, padding to 512; two zero blocks and padding to the record size
    at the end). Each sample is one ``writev`` and the sha256 is computed on the way, so the shard is never copied
    or read back; workers do not import torch (which webdataset does) for this.
    """

    def __init__(self, path: str | os.PathLike):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.hash = hashlib.sha256()
        self.nbytes = 0

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample: ``__key__`` plus entry name -> bytes."""
        key = sample["__key__"]
        parts = []
        for entry in sorted(k for k in sample if k != "__key__"):
            data = sample[entry]
            parts += (_header(f"{key}.{entry}", len(data)), data, _padding(len(data)))
        self._put(*parts)  # one writev per sample

    def _put(self, *parts: bytes) -> None:
        total = sum(len(x) for x in parts)
        written = os.writev(self.fd, parts)
        if written != total:  # a short write (rare, e.g. a signal): finish it the slow way
            rest = b"".join(parts)[written:]
            while rest:
                rest = rest[os.write(self.fd, rest):]
        for x in parts:
            self.hash.update(x)
        self.nbytes += total

    @staticmethod
    def member_bytes(sample: Mapping[str, Any]) -> int:
        """Bytes the members of ``sample`` take: a 512-byte header each (plus a PAX header for names over 99
        characters) and the data padded to 512."""
        total = 0
        for entry, value in sample.items():
            if entry != "__key__":
                name = f"{sample['__key__']}.{entry}"
                total += tarfile.BLOCKSIZE * (1 + 3 * (len(name) > 99)) + -(-len(value) // tarfile.BLOCKSIZE) * 512
        return total

    @staticmethod
    def total_bytes(members: int) -> int:
        """Bytes of the shard file whose members take ``members`` bytes: end blocks added, padded to the 10240-byte
        record."""
        return -(-(members + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def close(self) -> tuple[int, str]:
        """End the archive (two zero blocks, padded to a whole record), fsync it; returns (bytes, sha256)."""
        self._put(_end(self.nbytes))
        os.fsync(self.fd)
        os.close(self.fd)
        return self.nbytes, self.hash.hexdigest()


class OversizedSample(MedprepError, ValueError):
    """A sample that alone takes more bytes in a tar than a part of a :class:`ShardWriter` may hold."""

    def __init__(self, key: str, nbytes: int, limit: int):
        super().__init__(f"sample {key} takes {nbytes} bytes in a tar, more than a part's limit of {limit} bytes")
        self.key, self.nbytes, self.limit = key, nbytes, limit


@dataclass(frozen=True)
class TarPart:
    """A finished part of a :class:`ShardWriter`: its file name, samples, bytes and sha256."""

    file: str
    nsamples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "nsamples": self.nsamples, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TarPart:
        return cls(doc["file"], doc["nsamples"], doc["bytes"], doc["sha256"])


class ShardWriter:
    """Samples into numbered tar parts ``<folder>/<prefix>.partNN.tar`` (webdataset's ``ShardWriter``, with
    :class:`TarShard`'s bytes): a part is closed and the next one opened when the next sample would take its file
    over ``max_bytes`` (end blocks included) or its count over ``max_samples``; a sample larger than ``max_bytes``
    on its own is refused (:class:`OversizedSample`) before anything is written.

    A part is finished when it is closed: fsynced, then handed to ``post`` (e.g. an upload that moves it away) and
    listed in :attr:`parts`. ``with ShardWriter(...) as w:`` closes the last part on success; on an error it removes
    the unfinished part, so every part file left behind is finished.
    """

    def __init__(self, folder: str | os.PathLike, prefix: str, max_bytes: int, max_samples: int | None = None,
                 post: Callable[[Path], None] | None = None):
        if max_bytes < 1 or (max_samples is not None and max_samples < 1):
            raise ValueError(f"a part holds at least one sample: got max_bytes {max_bytes}, max_samples {max_samples}")
        self.folder, self.prefix, self.max_bytes, self.max_samples, self.post = (
            Path(folder), prefix, max_bytes, max_samples, post)
        self.parts: list[TarPart] = []
        self._shard: TarShard | None = None
        self._path = Path()
        self._samples = 0
        self._members = 0  # member bytes of the open part, as :meth:`TarShard.member_bytes` counts them

    def write(self, sample: Mapping[str, Any]) -> int:
        """Append one sample (``__key__`` plus entry name -> bytes); returns the number of the part it went into."""
        size = TarShard.member_bytes(sample)
        if TarShard.total_bytes(size) > self.max_bytes:
            raise OversizedSample(sample["__key__"], TarShard.total_bytes(size), self.max_bytes)
        full = self.max_samples is not None and self._samples >= self.max_samples
        if self._shard is not None and (full or TarShard.total_bytes(self._members + size) > self.max_bytes):
            self._finish()
        if self._shard is None:
            self._path = self.folder / f"{self.prefix}.part{len(self.parts):02d}.tar"
            self._shard = TarShard(self._path)
        self._shard.write(sample)
        self._samples += 1
        self._members += size
        return len(self.parts)

    def _finish(self) -> None:
        assert self._shard is not None
        nbytes, digest = self._shard.close()
        self._shard = None
        if self.post is not None:
            self.post(self._path)
        self.parts.append(TarPart(self._path.name, self._samples, nbytes, digest))
        self._samples = self._members = 0

    def close(self) -> tuple[TarPart, ...]:
        """Finish the open part (if any); returns every finished part, in order."""
        if self._shard is not None:
            self._finish()
        return tuple(self.parts)

    def abort(self) -> None:
        """Remove the unfinished part (if any); finished parts stay."""
        if self._shard is not None:
            os.close(self._shard.fd)
            self._shard = None
            self._path.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def tar_bytes(members: Mapping[str, bytes], gz: bool = False) -> bytes:
    """A small deterministic tar of ``members`` (name -> bytes, in the given order), laid out as :class:`TarShard`
    lays out a shard; gzip-compressed (zero timestamp) if ``gz``."""
    parts = [x for name, data in members.items() for x in (_header(name, len(data)), data, _padding(len(data)))]
    body = b"".join(parts)
    body += _end(len(body))
    return gzip.compress(body, mtime=0) if gz else body


# ------------------------------------------------------------------------------------------------------- reading


def seekable_size(f: IO[bytes]) -> int:
    """Size of an open, seekable file (the file that was opened, even if its path has been replaced since)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    return size


# the header fields tarfile writes for a regular member of a shard: mode, uid, gid, size, mtime as zero-padded octal
# with a NUL, the checksum as six octal digits, NUL, space, then the type flag ``0``
_NUMBERS = re.compile(rb"([0-7]{7})\x00([0-7]{7})\x00([0-7]{7})\x00([0-7]{11})\x00([0-7]{11})\x00([0-7]{6})\x00 0")
_NO_DEVICE = tarfile.NUL * 16  # devmajor and devminor of a regular member


def _byte_sum(block: bytes) -> int:
    """The sum of the bytes of a 512-byte block, in C: adler32's low half is 1 + the sum of the bytes modulo 65521,
    exact for 256 bytes (at most 65280)."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


class _ShardTarInfo(tarfile.TarInfo):
    """``tarfile.TarInfo`` whose header parser takes a fast path for the headers a shard holds (a ustar regular
    file, no name prefix, the numeric fields as ``tarfile`` writes them, the unsigned checksum right) and builds the
    same object ``tarfile`` would; any other block goes to ``tarfile``'s own parser, so what is accepted, refused
    or skipped is unchanged."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        fields = _NUMBERS.fullmatch(buf, 100, 157) if len(buf) == tarfile.BLOCKSIZE else None
        if (fields is None or buf[257:265] != tarfile.POSIX_MAGIC or buf[345] or buf[329:345] != _NO_DEVICE
                or int(fields[6], 8) != 256 + _byte_sum(buf) - sum(buf[148:156])):
            return super().frombuf(buf, encoding, errors)
        obj = cls()
        obj.name = tarfile.nts(buf[0:100], encoding, errors)
        obj.mode, obj.uid, obj.gid, obj.size, obj.mtime, obj.chksum = (int(x, 8) for x in fields.groups())
        obj.type = tarfile.REGTYPE
        obj.linkname = tarfile.nts(buf[157:257], encoding, errors)
        obj.uname = tarfile.nts(buf[265:297], encoding, errors)
        obj.gname = tarfile.nts(buf[297:329], encoding, errors)
        obj.devmajor = obj.devminor = 0
        return obj


def _members(f: IO[bytes], where: str, regular_only: bool) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Members of the tar in ``f`` in file order, headers read by seeking (data is read only when asked for).

    ``regular_only`` (shards): any other member type (folder, link, device) is a :class:`ShardError`, and the
    members must end with the tar end marker (``tarfile`` stops silently at a cut or damaged header); otherwise
    other members are skipped.
    """
    try:
        tf = tarfile.open(fileobj=f, mode="r:", tarinfo=_ShardTarInfo)
    except tarfile.TarError as e:
        raise ShardError(f"{where}: not a readable tar ({e})") from None
    with tf:
        it, last = iter(tf), None
        while True:
            try:
                m = next(it)
            except StopIteration:
                if regular_only:
                    f.seek(tf.offset)
                    if f.read(2 * tarfile.BLOCKSIZE) != tarfile.NUL * (2 * tarfile.BLOCKSIZE):
                        raise ShardError(f"{where}: no tar end marker at byte {tf.offset} (after member {last!r}): "
                                         f"the shard is cut short or a tar header is damaged") from None
                return
            except tarfile.TarError as e:
                raise ShardError(f"{where}: the tar breaks off after member {last!r} ({e}): the shard is cut short "
                                 f"or damaged") from None
            last = m.name
            if m.isreg():
                yield tf, m
            elif regular_only:
                raise ShardError(f"{where}: member {m.name!r} is not a regular file; a shard holds only files")


def split_name(name: str, where: str) -> tuple[str, str]:
    """``(key, entry)`` of the member name ``<key>.<entry>``; anything else is a :class:`ShardError`."""
    key, dot, entry = name.partition(".")
    if not dot or not entry or not KEY.fullmatch(key):
        raise ShardError(f"{where}: member {name!r} is not named <key>.<entry> with a tar-safe key "
                         f"([A-Za-z0-9_-]); the shard was renamed or changed after the build")
    return key, entry


def _data(tf: tarfile.TarFile, m: tarfile.TarInfo, where: str, key: str) -> bytes:
    try:
        data = tf.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError) as e:
        raise ShardError(f"{where}: sample {key}: member {m.name} is cut short or unreadable ({e})") from None
    if len(data) != m.size:
        raise ShardError(f"{where}: sample {key}: member {m.name} holds {len(data)} of its {m.size} bytes")
    return data


class _Grouper:
    """Groups members into samples and checks that each key is in one place and holds each entry once."""

    def __init__(self, where: str):
        self.where = where
        self.keys: list[str] = []
        self._seen: set[str] = set()
        self._entries: set[str] = set()

    def add(self, name: str) -> tuple[str, str, bool]:
        """``(key, entry, starts a new sample)`` for the next member ``name``."""
        key, entry = split_name(name, self.where)
        new = not self.keys or key != self.keys[-1]
        if new:
            if key in self._seen:
                raise ShardError(f"{self.where}: sample {key} appears in two places (after {self.keys[-1]}); "
                                 f"the shard was changed after the build")
            self._seen.add(key)
            self.keys.append(key)
            self._entries = set()
        if entry in self._entries:
            raise ShardError(f"{self.where}: sample {key} holds {entry} twice")
        self._entries.add(entry)
        return key, entry, new

    def check_count(self, expected: int | None) -> None:
        if expected is not None and len(self.keys) != expected:
            cut = f" (the last one read is {self.keys[-1]})" if self.keys else ""
            raise ShardError(f"{self.where}: holds {len(self.keys)} samples{cut} but the manifest says {expected}: "
                             f"the shard was cut short or changed after the build")


def stream_samples(f: IO[bytes], where: str, *, expected: int | None = None,
                   entries: Collection[str] | None = None, stride: int = 1, offset: int = 0, url: str | None = None,
                   start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Samples of the shard open in ``f``, in tar order: dicts with ``__key__``, ``__url__`` (``url``) and the
    bytes of ``entries`` (all when None).

    Only samples whose number is ``offset`` modulo ``stride`` and in ``[start, stop)`` are read; the data of other
    members is skipped, and reading ends at sample ``stop``. Every member name is checked; with ``expected`` the
    number of samples must match once the shard is read to its end (a shard cut at a sample boundary raises after
    its last sample). ``where`` names the shard in errors.
    """
    group = _Grouper(where)
    sample: dict[str, Any] | None = None
    for tf, m in _members(f, where, regular_only=True):
        key, entry, new = group.add(m.name)
        if new:
            if sample is not None:
                yield sample
            number = len(group.keys) - 1
            if stop is not None and number >= stop:
                return
            sample = {"__key__": key, "__url__": url} if number >= start and number % stride == offset else None
        if sample is not None and (entries is None or entry in entries):
            sample[entry] = _data(tf, m, where, key)
    group.check_count(expected)
    if sample is not None:
        yield sample


@dataclass(frozen=True)
class IndexedSample:
    """One sample of a :class:`ShardIndex`: its key and, per entry, ``(byte offset, size)`` of the data."""

    key: str
    entries: dict[str, tuple[int, int]]


class ShardIndex:
    """The samples of one shard with the offsets of their members, read from the tar headers only (no data).

    Built with the same checks as :func:`stream_samples`; :meth:`read` then fetches entries of one sample with one
    ranged read.
    """

    def __init__(self, f: IO[bytes], where: str, expected: int | None = None):
        self.where = where
        group = _Grouper(where)
        self.samples: list[IndexedSample] = []
        for _, m in _members(f, where, regular_only=True):
            key, entry, new = group.add(m.name)
            if new:
                self.samples.append(IndexedSample(key, {}))
            self.samples[-1].entries[entry] = (m.offset_data, m.size)
        group.check_count(expected)
        self.size = seekable_size(f)
        self._position = {s.key: i for i, s in enumerate(self.samples)}

    def __len__(self) -> int:
        return len(self.samples)

    def keys(self) -> list[str]:
        return [s.key for s in self.samples]

    def position(self, key: str) -> int:
        """Number of sample ``key`` in the shard."""
        try:
            return self._position[key]
        except KeyError:
            raise ShardError(f"{self.where}: holds no sample {key}; the shard does not match its samples "
                             f"list") from None

    def span(self, j: int, entries: Collection[str] | None = None) -> tuple[int, int]:
        """The byte range ``[lo, hi)`` that holds the wanted entries of sample ``j`` (all when None)."""
        wanted = [v for e, v in self.samples[j].entries.items() if entries is None or e in entries]
        if not wanted:
            return 0, 0
        return min(o for o, _ in wanted), max(o + n for o, n in wanted)

    def cut(self, j: int, blob: bytes, lo: int, entries: Collection[str] | None = None,
            url: str | None = None) -> dict[str, Any]:
        """Sample ``j`` from ``blob``, the bytes of the file from offset ``lo`` on (at least :meth:`span`)."""
        s = self.samples[j]
        out: dict[str, Any] = {"__key__": s.key, "__url__": url}
        for e, (off, n) in s.entries.items():
            if entries is None or e in entries:
                data = blob[off - lo: off - lo + n]
                if len(data) != n:
                    raise ShardError(f"{self.where}: sample {s.key}: member {s.key}.{e} holds {len(data)} of its "
                                     f"{n} bytes; the shard was cut short after it was opened")
                out[e] = data
        return out


class MemberIndex:
    """Offsets of the regular members of any tar at a local path or fsspec URL (names without a leading ``./``),
    read from its headers, for reading members in place without extracting (SA-1B downloads)."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = fsio.fs_and_path(url)
        with self.fs.open(self.path, "rb") as f:
            self.members = {m.name.removeprefix("./"): (m.offset_data, m.size)
                            for _, m in _members(f, url, regular_only=False)}

    def read(self, name: str) -> bytes:
        """The data of member ``name``."""
        try:
            offset, size = self.members[name]
        except KeyError:
            raise ShardError(f"{self.url}: has no member {name}") from None
        data = self.fs.cat_file(self.path, start=offset, end=offset + size)
        if len(data) != size:
            raise ShardError(f"{self.url}: member {name} holds {len(data)} of its {size} bytes")
        return data


__all__ = ["KEY", "TAR_MTIME", "IndexedSample", "MemberIndex", "OversizedSample", "ShardError", "ShardIndex",
           "ShardWriter", "TarPart", "TarShard", "seekable_size", "split_name", "stream_samples", "tar_bytes"]
