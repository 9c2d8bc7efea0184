"""Dataset downloads read straight from their zip / tar archives, without extracting anything to disk.

An archive's members appear where "extract here" would put them: an archive whose files all sit in one top-level
folder (``DRIVE.zip`` -> ``DRIVE/...``) adds that folder; one with loose files (``stare-images.tar``) adds a folder
named after the archive (``stare-images/...``). Archives inside archives are mounted the same way, in place. So a
build from the archives sees the same relative paths, and writes the same bytes, as a build from the extracted
folder. Members that would land outside the folder (absolute paths, ``..``), links, device files and sparse
members are refused, and declared sizes and compression ratios are checked before anything is decompressed.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from medprep.manifests.errors import MedprepError

from .tree import ARCHIVE_SUFFIXES, SourceTree

READABLE = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
SLOW_COMPRESSED_TAR = 256 << 20  # compressed tars have no random access: each backwards read decompresses again

log = logging.getLogger("medprep.build")


class ArchiveError(MedprepError, ValueError):
    """An archive that is unsafe (path traversal, links, decompression bomb) or unreadable; the message says which
    member and what to do."""


@dataclass(frozen=True)
class Limits:
    """Guards against decompression bombs. Sizes are uncompressed bytes as declared in the archive headers, which
    also bound what a read can return."""

    max_member: int = 4 << 30  # one member (inner archives are held in memory)
    max_total: int = 256 << 30  # all members of all archives of one source
    # uncompressed / compressed, per zip member or per compressed tar; deflate tops out near 1032:1 (an all-zero
    # member), so the default only stops bzip2/lzma members and forged headers, never a real (even empty) image
    max_ratio: float = 2000.0
    ratio_from: int = 1 << 20  # members (or compressed tars) smaller than this are not ratio-checked
    max_depth: int = 2  # archives inside archives inside the archive


def is_archive(name: str) -> bool:
    """Whether ``name`` has the suffix of an archive (readable or not)."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(name: str) -> str:
    """'labels-ah.tar' -> 'labels-ah', 'x.tar.gz' -> 'x'."""
    low = name.lower()
    cut = max((len(s) for s in ARCHIVE_SUFFIXES if low.endswith(s)), default=0)
    return name[: len(name) - cut] if cut else name


def holds_archives(folder: Path) -> bool:
    """A folder to read as archives: it has no subfolders and at least one archive among its files."""
    found = False
    with os.scandir(folder) as entries:  # stops at the first subfolder, without a stat per file
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                return False
            found = found or (is_archive(e.name) and e.is_file())
    return found


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


@dataclass(frozen=True)
class _Member:
    name: str  # normalised POSIX path inside the archive
    raw: str  # the name as stored
    size: int
    csize: int  # compressed size (zip); the tar's data size otherwise
    info: zipfile.ZipInfo | tarfile.TarInfo = field(compare=False, repr=False)  # what reads open it by


class _Container:
    """One zip or tar, opened from a path or from bytes (an archive inside an archive)."""

    def __init__(self, label: str, name: str, fileobj: IO[bytes], nbytes: int, limits: Limits):
        self.label, self.name, self.limits, self.nbytes = label, name, limits, nbytes
        low = name.lower()
        try:
            if low.endswith(".zip"):
                self._zip: zipfile.ZipFile | None = zipfile.ZipFile(fileobj)
                self._tar: tarfile.TarFile | None = None
            elif low.endswith(READABLE):
                self._zip, self._tar = None, tarfile.open(fileobj=fileobj, mode="r:*")
            else:
                raise ArchiveError(f"{label}: {Path(name).suffix} archives cannot be read in place; unpack it "
                                   f"(e.g. '7z x {Path(name).name}') and pass the folder as --src")
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
            raise ArchiveError(f"{label}: not a readable {Path(name).suffix} archive ({e}); download it again"
                               ) from None

    @property
    def is_zip(self) -> bool:
        return self._zip is not None

    @property
    def compressed(self) -> bool:
        return self._tar is not None and not self.name.lower().endswith(".tar")

    def members(self) -> Iterator[_Member]:
        """Regular-file members, after refusing unsafe ones; directories are skipped."""
        if self._zip is not None:
            for zi in self._zip.infolist():
                mode = zi.external_attr >> 16
                if zi.is_dir():
                    continue
                if stat.S_ISLNK(mode):
                    self._refuse(zi.filename, "is a symbolic link")
                if zi.flag_bits & 0x1:
                    raise ArchiveError(f"{self.label}: member {zi.filename!r} is encrypted; unpack it with its "
                                       f"password and pass the folder as --src")
                yield _Member(self._safe(zi.filename), zi.filename, zi.file_size, zi.compress_size, zi)
            return
        assert self._tar is not None
        try:
            for ti in self._tar:
                if ti.isdir():
                    continue
                if ti.issym() or ti.islnk():
                    self._refuse(ti.name, f"is a {'symbolic' if ti.issym() else 'hard'} link to {ti.linkname!r}")
                if not ti.isfile():
                    self._refuse(ti.name, "is a device, FIFO or other special file")
                if ti.issparse():
                    self._refuse(ti.name, "is a sparse file (declared size without data)")
                yield _Member(self._safe(ti.name), ti.name, ti.size, ti.size, ti)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArchiveError(f"{self.label}: damaged tar ({e}); download it again") from None

    def _refuse(self, name: str, why: str) -> None:
        raise ArchiveError(f"{self.label}: member {name!r} {why}; medprep reads only regular files from archives "
                           f"and refuses this one. Check where the archive came from")

    def _safe(self, name: str) -> str:
        n = name.replace("\\", "/")
        parts = n.split("/")
        if n.startswith("/") or re.match(r"[A-Za-z]:", n) or ".." in parts:
            self._refuse(name, "has an absolute path or '..' and would land outside the extraction folder "
                               "(path traversal)")
        return "/".join(p for p in parts if p not in ("", "."))

    def read(self, m: _Member) -> bytes:
        limit = self.limits.max_member
        if self._zip is not None:
            with self._zip.open(m.info) as f:
                data = f.read(limit + 1)
        else:
            assert self._tar is not None
            f = self._tar.extractfile(m.info)  # by name, tarfile would scan every member for it
            if f is None:
                raise ArchiveError(f"{self.label}: member {m.raw!r} is not a regular file")
            data = f.read(limit + 1)
        if len(data) > limit or len(data) != m.size:
            raise ArchiveError(f"{self.label}: member {m.raw!r} gave {len(data)} bytes, its header says {m.size} "
                               f"(limit {limit}); the archive is damaged or forged")
        return data


class ArchiveTree(SourceTree):
    """A ``SourceTree`` over archive files: ``root`` is one archive, or a folder without subfolders holding the
    archives of a download side by side (ISIC's six zips, STARE's tars) and possibly loose files."""

    def __init__(self, root: str | os.PathLike, limits: Limits | None = None):
        self.root = Path(root)
        self.limits = limits or Limits()
        self._entries: dict[str, tuple[_Container | None, _Member | None]] = {}
        self._total = 0
        if self.root.is_file():
            archives, loose = [self.root], []
        elif self.root.is_dir():
            entries = sorted(p for p in self.root.iterdir() if not p.name.startswith("."))
            archives = [p for p in entries if p.is_file() and is_archive(p.name)]
            loose = [p for p in entries if p.is_file() and not is_archive(p.name)]
        else:
            raise ArchiveError(f"--src {self.root} does not exist")
        self._mtime = max((path.stat().st_mtime_ns for path in archives), default=0)
        for path in archives:
            self._mount(_Container(str(path), path.name, open(path, "rb"), path.stat().st_size, self.limits), "", 0)
        for path in loose:
            self._add(path.name, None, None)

    @property
    def label(self) -> str:
        return str(self.root)

    @cached_property
    def _listed(self) -> list[str]:
        return sorted(self._entries)

    def stamp(self, rel: str) -> tuple[int, int] | None:
        """(size, mtime in ns): a member's size with the newest mtime of the archives (loose files: their own)."""
        entry = self._entries.get(rel)
        if entry is None or entry[1] is None:
            return super().stamp(rel)
        return entry[1].size, self._mtime

    def read_stamped(self, rel: str) -> tuple[bytes, tuple[int, int] | None]:
        stamp = self.stamp(rel)
        return self.read(rel), stamp

    def read(self, rel: str) -> bytes:
        try:
            container, member = self._entries[rel]
        except KeyError:
            raise FileNotFoundError(f"{rel} is not in {self.label}") from None
        if container is None or member is None:  # a loose file: read as a folder's file is (regular, inside --src)
            return SourceTree.read_stamped(self, rel)[0]
        return container.read(member)

    # mounting -----------------------------------------------------------------------------------------------------

    def _mount(self, c: _Container, base: str, depth: int) -> None:
        members = []
        declared = 0
        for m in c.members():
            self._check_size(c, m)
            declared += m.size
            self._total += m.size
            if self._total > self.limits.max_total:
                raise ArchiveError(f"{c.label}: the archives of {self.label} declare more than "
                                   f"{self.limits.max_total} uncompressed bytes (limit max_total); refusing a likely "
                                   f"decompression bomb")
            if (c.compressed and declared >= self.limits.ratio_from
                    and declared > self.limits.max_ratio * max(c.nbytes, 1)):
                raise ArchiveError(f"{c.label}: {declared} uncompressed bytes from {c.nbytes} compressed (ratio over "
                                   f"{self.limits.max_ratio:g}); refusing a likely decompression bomb")
            members.append(m)
        if c.compressed and c.nbytes > SLOW_COMPRESSED_TAR:
            log.warning("%s is a compressed tar of %d MB: members are read by decompressing from its start; "
                        "gunzip it to a .tar (still read in place) for a faster build", c.label, c.nbytes >> 20)
        visible = [m for m in members if not _hidden(m.name)]
        tops = {m.name.split("/", 1)[0] if "/" in m.name else None for m in visible}
        prefix = base if len(tops) == 1 and None not in tops else _join(base, archive_stem(c.name))
        for m in visible:
            path = _join(prefix, m.name)
            if m.name.lower().endswith(READABLE):
                if depth >= self.limits.max_depth:
                    raise ArchiveError(f"{c.label}: {m.name} nests archives deeper than {self.limits.max_depth} "
                                       f"levels; unpack the outer ones")
                data = c.read(m)
                inner = _Container(f"{c.label}!{m.name}", m.name, io.BytesIO(data), len(data), self.limits)
                self._mount(inner, str(PurePosixPath(path).parent) if "/" in path else "", depth + 1)
            else:
                self._add(path, c, m)

    def _check_size(self, c: _Container, m: _Member) -> None:
        lim = self.limits
        if m.size > lim.max_member:
            raise ArchiveError(f"{c.label}: member {m.raw!r} declares {m.size} uncompressed bytes, over the "
                               f"{lim.max_member}-byte limit (max_member); refusing a likely decompression bomb")
        if c.is_zip and m.size >= lim.ratio_from and m.size > lim.max_ratio * max(m.csize, 1):
            raise ArchiveError(f"{c.label}: member {m.raw!r} expands {m.csize} -> {m.size} bytes (ratio over "
                               f"{lim.max_ratio:g}); refusing a likely decompression bomb")

    def _add(self, path: str, c: _Container | None, m: _Member | None) -> None:
        if path in self._entries:
            first = self._entries[path][0]
            raise ArchiveError(f"{path} is in {first.label if first else self.root / path} and again in "
                               f"{c.label if c else self.root / path}; remove one copy")
        self._entries[path] = (c, m)


def _join(base: str, rel: str) -> str:
    return f"{base}/{rel}" if base else rel


__all__ = ["ArchiveError", "ArchiveTree", "Limits", "archive_stem", "holds_archives", "is_archive"]


def open_tree(src: str | os.PathLike, reuse: bool = False) -> SourceTree:
    """The tree of a download as the user passed it: an archive file (zip/tar, read in place), a folder without
    subfolders holding the download's archives side by side, or the extracted folder.

    ``reuse=True`` (the build's tasks) returns the archive tree this thread opened last for the same source while
    its archives are unchanged (same size, mtime and inode), instead of listing and mounting them again per task.
    """
    path = Path(src)
    if reuse:
        held = getattr(_reused, "tree", None)
        if held is not None and held[0] == path and held[1] is not None and held[1] == _signature(path):
            return held[2]
    if (path.is_file() and is_archive(path.name)) or (path.is_dir() and holds_archives(path)):
        signature = _signature(path) if reuse else None
        tree = ArchiveTree(path)
        if reuse:
            _reused.tree = (path, signature, tree)
        return tree
    return SourceTree(path)


_reused = threading.local()  # (path, signature, ArchiveTree): tar members are read through one file object


def _signature(path: Path) -> tuple | None:
    """What changes when an archive, or an archive in a folder of archives, is replaced or rewritten."""
    def key(st: os.stat_result) -> tuple[int, int, int]:
        return st.st_ino, st.st_size, st.st_mtime_ns

    try:
        if path.is_dir():
            with os.scandir(path) as entries:
                return tuple(sorted((e.name, *key(e.stat())) for e in entries if not e.name.startswith(".")))
        return key(path.stat())
    except OSError:
        return None
