"""Read-only view of a dataset download: list files, read bytes, locate the dataset root in it."""

from __future__ import annotations

import errno
import fnmatch
import gc
import os
import re
import stat
from contextlib import contextmanager
from functools import cached_property, lru_cache
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, TypeVar

from medprep.manifests.errors import MedprepError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


class LayoutError(MedprepError, FileNotFoundError):
    """The source does not have the layout a converter expects; the message says what and where."""


class InputRefused(MedprepError, OSError):
    """A path of the source that is not read: not a regular file (a FIFO, a device, a socket), a link leading out of
    ``--src``, or a file growing as it is read. The message names it and what to do."""


_DIGITS = re.compile(r"(\d+)")


def natural_key(s: str) -> tuple:
    """Sort key that orders '2' before '10' (datasets number their files without zero padding)."""
    parts = _DIGITS.split(s.lower())  # digits are not cased: lowering the whole string lowers every text part
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


# the head of a name: its first five parts (text, number, text, number, text), each whole
_HEAD = re.compile(r"\D*\d*\D*\d*\D*")
_T = TypeVar("_T")


def natural_sorted(items: Iterable[_T], text: Callable[[_T], str] = str) -> list[_T]:
    """``sorted(items, key=lambda x: natural_key(text(x)))``, tokenising most names only in part.

    Each name is first ordered by the key of its head, its first five parts: that is the full key's first five
    parts (or the full key, shorter), so heads that differ order their names as the full keys would. Only names
    with equal heads are tokenised whole. A 64-hex name (DSB-2018's nuclei, ~20 digit runs) costs half.
    """
    def head(name: str) -> tuple:
        return natural_key(_HEAD.match(name).group())  # type: ignore[union-attr]  # the pattern matches ''

    ranked = sorted((head(text(x)), i, x) for i, x in enumerate(items))  # i: stable, and x is never compared
    out = [x for _, _, x in ranked]
    start = 0
    for end in range(1, len(out) + 1):
        if end == len(out) or ranked[end][0] != ranked[start][0]:
            if end - start > 1:
                out[start:end] = sorted(out[start:end], key=lambda x: natural_key(text(x)))
            start = end
    return out


class SourceTree:
    """Files of a dataset download, addressed by POSIX paths relative to the root the user passed."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.exists():
            raise LayoutError(f"--src {self.root} does not exist")
        if not self.root.is_dir():
            raise LayoutError(f"--src {self.root} is a file; expected the folder the dataset download unpacks to")

    @property
    def label(self) -> str:
        return str(self.root)

    @cached_property
    def files(self) -> list[str]:
        """All files below the root, sorted, as relative POSIX paths (hidden files and __MACOSX skipped); files whose
        path is not valid UTF-8 are left out (see ``undecodable``)."""
        return [f for f in self._listed if _utf8(f)]

    @cached_property
    def undecodable(self) -> list[str]:
        """The files whose path is not valid UTF-8, shown with the bad bytes escaped (``bad\\xff.png``). Converters
        never see them; the build lists those in the dataset's folders as failures."""
        return [escaped(f) for f in self._listed if not _utf8(f)]

    @cached_property
    def _listed(self) -> list[str]:
        """All files below the root, sorted, as the file system names them (bytes that are not UTF-8 as the lone
        surrogates Python decodes them to)."""
        return self._walk[0]

    @cached_property
    def unlisted(self) -> dict[str, str]:
        """Linked folders that are not listed (they leave the root, or loop back into a folder they lie in), by
        path, with the reason. The build counts each as a failure."""
        return self._walk[1]

    @cached_property
    def _walk(self) -> tuple[list[str], dict[str, str]]:
        """``_listed`` and ``unlisted``. A linked folder is listed like a real one when it leads to a folder inside
        the root that is not one it lies in (a loop)."""
        out: list[str] = []
        unlisted: dict[str, str] = {}
        top = os.fspath(self.root)
        chains = {top: (self._real_root,)}  # folder walked -> the real folders it lies in (itself last)
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            rel = dirpath[len(top):].lstrip(os.sep).replace(os.sep, "/")
            prefix = f"{rel}/" if rel else ""
            chain = chains.pop(dirpath)
            kept = []
            for d in sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX"):
                path = os.path.join(dirpath, d)
                real = os.path.realpath(path) if os.path.islink(path) else os.path.join(chain[-1], d)
                if not _inside(real, self._real_root):
                    unlisted[prefix + d] = (f"a link to the folder {real}, outside --src {self.root}: not "
                                            f"followed; move or copy it into --src")
                elif real in chain:
                    unlisted[prefix + d] = (f"a link to {real}, a folder it lies in: not followed (a loop); "
                                            f"remove the link")
                else:
                    chains[path] = (*chain, real)
                    kept.append(d)
            dirnames[:] = kept
            out.extend([prefix + f for f in filenames if not f.startswith(".")])
        out.sort()
        return out, unlisted

    @cached_property
    def _real_root(self) -> str:
        return os.path.realpath(self.root)

    @cached_property
    def _prefix(self) -> str:
        """The root as a string ending in the separator: joined to a million paths, no pathlib object each."""
        return os.path.join(self.root, "")

    def read(self, rel: str) -> bytes:
        return self.read_stamped(rel)[0]

    def read_stamped(self, rel: str) -> tuple[bytes, tuple[int, int] | None]:
        """``read`` and the ``stamp`` of the file read (taken from the open file, before reading it). Plain file
        descriptor calls: half the cost of a file object, which DSB-2018's 46 files per case notice.

        Only a regular file inside the root is opened (a FIFO would hang the read, a device never end it): anything
        else, or a link leading out of the root, raises :class:`InputRefused` naming it. At most the size the file
        had when opened is read: one that grows meanwhile is refused, not read without end."""
        path = self._prefix + rel
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(path)
                if not _inside(real, self._real_root):
                    raise InputRefused(f"{rel} is a link to {real}, outside --src {self.root}: not read; copy the "
                                       f"file into --src or pass a --src that holds both")
                st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(st.st_mode):
                raise InputRefused(f"{rel} is {_kind(st.st_mode)}, not a regular file: not opened; replace it with "
                                   f"the file itself")
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
        except (InputRefused, IsADirectoryError):
            raise
        except OSError as e:
            raise OSError(e.errno, e.strerror, path) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced between the check and the open
                raise InputRefused(f"{rel} is {_kind(st.st_mode)}, not a regular file: not read")
            want, got, chunks = st.st_size + 1, 0, []  # one byte more than the stat: a file that grew is seen
            while got < want:
                chunk = os.read(fd, want - got)  # a call returns at most ~2 GiB
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except OSError as e:
            if isinstance(e, InputRefused):
                raise
            raise OSError(e.errno, e.strerror, path) from None
        finally:
            os.close(fd)
        if got > st.st_size:
            raise InputRefused(f"{rel} grew while it was read (it had {st.st_size} bytes when opened): it is being "
                               f"written; build again when it is complete")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks), (st.st_size, st.st_mtime_ns)

    def stamp(self, rel: str) -> tuple[int, int] | None:
        """(size, mtime in ns) of a file, the build's fast check for changed inputs; None if it cannot be read."""
        try:
            st = os.stat(self._prefix + rel)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def exists(self, rel: str) -> bool:
        return rel in self._fileset

    def absent(self, paths: set[str]) -> set[str]:
        """The paths of ``paths`` that are no file of the tree."""
        return paths - self._fileset

    def folders(self) -> Iterator[tuple[str, list[str]]]:
        """(folder, the paths of the files directly in it) for every folder of the tree, '' for the root."""
        return ((folder, files) for folder, (_, files) in self._folders.items())

    @cached_property
    def _fileset(self) -> frozenset[str]:
        return frozenset(self.files)

    def glob(self, pattern: str, ignore_case: bool = False) -> list[str]:
        """Relative paths matching a glob in which ``*`` does not cross '/', naturally sorted.

        The pattern is matched folder by folder through an index of the tree, so a glob costs what the folders it
        reaches hold, not what the whole download holds (``<id>/masks/*.png`` once per case stays linear)."""
        found = self._match(pattern, "", ignore_case)
        if len(found) > 1:
            found.sort()  # ties of the natural order stay in path order
            # below a shared folder the natural order is that of the rest of the path: only that is tokenised
            cut = os.path.commonprefix([found[0], found[-1]]).rfind("/") + 1
            found = natural_sorted(found, lambda f: f[cut:])
        return found

    @cached_property
    def _folders(self) -> dict[str, tuple[list[str], list[str]]]:
        """Folder path ('' for the root) -> (names of its subfolders, paths of its files), built once. The paths are
        the listed strings themselves: the index holds references, not copies, of a million paths."""
        index: dict[str, tuple[list[str], list[str]]] = {"": ([], [])}
        entry, prefix = index[""], ""
        for f in self.files:
            if not (f.startswith(prefix) and f.find("/", len(prefix)) < 0):  # not in the folder of the last file
                folder = f.rpartition("/")[0]
                prefix = f"{folder}/" if folder else ""
                entry = index.get(folder)
                if entry is None:  # a new folder: register it, and its parents up to the first one already known
                    entry = index[folder] = ([], [])
                    child = folder
                    while True:
                        parent, _, sub = child.rpartition("/")
                        if parent in index:
                            index[parent][0].append(sub)
                            break
                        index[parent] = ([sub], [])
                        child = parent
            entry[1].append(f)
        return index

    @cached_property
    def _caseless(self) -> dict[tuple[str, bool], tuple[dict[str, list[str]], list[str]]]:
        """(folder, files?) -> (lower-cased ASCII name -> subfolder names or file paths, the non-ASCII ones); filled
        on demand by case-insensitive globs."""
        return {}

    def _matching(self, folder: str, files: bool, part: str, ignore_case: bool) -> list[str]:
        """The subfolder names (or the file paths) of ``folder`` whose name matches one glob segment."""
        entry = self._folders.get(folder)
        if entry is None or not part:
            return []
        items = entry[1] if files else entry[0]
        cut = len(folder) + bool(folder) if files else 0  # where the name starts in an item
        if not ignore_case and not _MAGIC.search(part):
            path = at_path(folder, part)
            return [(path if files else part)] if path in (self._fileset if files else self._folders) else []
        if ignore_case and not _MAGIC.search(part) and part.isascii():  # a literal: look it up, whatever the case
            key = (folder, files)
            if key not in self._caseless:
                lower: dict[str, list[str]] = {}
                for item in items:
                    if item.isascii():
                        lower.setdefault(item[cut:].lower(), []).append(item)
                self._caseless[key] = (lower, [item for item in items if not item.isascii()])
            lower, other = self._caseless[key]
            items = lower.get(part.lower(), []) + other
        match = _segment_regex(part, ignore_case).fullmatch
        return [item for item in items if match(item, cut)]  # matched from the name on, without slicing it out

    def _match(self, pattern: str, base: str, ignore_case: bool) -> list[str]:
        """Files below the folder ``base`` matching ``pattern`` (relative to it), unsorted."""
        if not ignore_case and not _MAGIC.search(pattern):  # a plain path
            path = at_path(base, pattern)
            return [path] if path in self._fileset else []
        if _CROSSES_SLASH.search(pattern):  # a character class holding '/': match the whole paths
            rx = re.compile(re.escape(base + "/" if base else "") + _glob_regex(pattern),
                            re.IGNORECASE if ignore_case else 0)
            return [f for f in self.files if rx.fullmatch(f)]
        *folders, last = pattern.split("/")
        current = [base]
        for part in folders:
            current = [at_path(folder, name) for folder in current
                       for name in self._matching(folder, False, part, ignore_case)]
        return [f for folder in current for f in self._matching(folder, True, last, ignore_case)]

    def top_level(self, limit: int = 12) -> str:
        dirs, files = self._folders[""]
        entries = sorted([f"{d}/" for d in dirs] + files)  # files of the root folder: their paths are their names
        shown = ", ".join(entries[:limit]) + (f", ... ({len(entries)} entries)" if len(entries) > limit else "")
        return shown or "nothing"

    def find_root(self, marker: str, dataset: str, max_depth: int = 3) -> str:
        """The prefix below which ``marker`` (a glob) matches, searching the root and up to ``max_depth`` levels.

        Users pass either the dataset folder itself or a folder above it; both work. Raises LayoutError naming
        what was expected and what was found.
        """
        found = self.locate(marker, max_depth)
        if found is not None:
            return found
        archives = [f for f in self.files if f.lower().endswith(ARCHIVE_SUFFIXES) and "/" not in f]
        inside = self.inside_of(marker)
        if archives:
            hint = f"; {self.label} holds {', '.join(archives)}: unpack it or pass the archive as --src"
        elif inside is not None:
            hint = (f"; {self.label} looks like a folder inside the download ({inside}/ of {marker}): pass the "
                    f"parent folder, --src {Path(self.label).parent}")
        else:
            hint = "; pass the folder the official download unpacks to"
        if self.unlisted:
            hint += "; not listed: " + "; ".join(f"{k}/, {why}" for k, why in list(self.unlisted.items())[:3])
        raise LayoutError(
            f"{dataset}: expected {marker} under {self.label} (or a subfolder of it); found {self.top_level()}{hint}"
        )

    def locate(self, marker: str, max_depth: int = 3) -> str | None:
        """The shallowest folder prefix ('' for the root) below which the glob ``marker`` matches, searching the
        root and up to ``max_depth`` levels below it; None if it matches nowhere."""
        prefixes = sorted((p for p in self._folders if p.count("/") + bool(p) <= max_depth),
                          key=lambda p: (p.count("/") + bool(p), p))
        return next((prefix for prefix in prefixes if self._match(marker, prefix, False)), None)

    def inside_of(self, marker: str) -> str | None:
        """When the root is a folder inside the dataset (``DRIVE/training`` for the marker
        ``training/images/*_training.tif``), the marker's leading folders that lead to it (``training``); else
        None. Only a tail of the marker that still names a folder counts (a bare ``*.png`` proves nothing)."""
        parts = marker.split("/")
        for cut in range(1, len(parts) - 1):
            if self._match("/".join(parts[cut:]), "", False):
                return "/".join(parts[:cut])
        return None


_MAGIC = re.compile(r"[*?\[]")
_CROSSES_SLASH = re.compile(r"\[[^\]]*/[^\]]*\]")  # a '[...]' class with '/' in it: the pattern is not per folder


def at_path(folder: str, name: str) -> str:
    """``folder/name``, or ``name`` in the root folder ''."""
    return f"{folder}/{name}" if folder else name


@lru_cache(maxsize=256)
def _segment_regex(part: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(_glob_regex(part), re.IGNORECASE if ignore_case else 0)


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                out.append(re.escape(c))
            else:
                out.append(fnmatch.translate(pattern[i : j + 1])[4:-3])
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a file the user names beside ``--src`` (``--split-file``, ``--groups-file``, ``--config``):
    :class:`InputRefused` for anything but a regular file or a folder (a FIFO would block the read forever, a
    device never end it), the OSError of ``open`` otherwise."""
    st = os.stat(path)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):  # a folder: open raises IsADirectoryError
        raise InputRefused(f"{os.fspath(path)} is {_kind(st.st_mode)}, not a regular file: not opened")
    with open(path, "rb") as f:
        return f.read()


def _inside(real: str, root: str) -> bool:
    """Whether the real path ``real`` is the real folder ``root`` or lies below it."""
    return real == root or real.startswith(os.path.join(root, ""))


def _kind(mode: int) -> str:
    """What a file of mode ``mode`` is, in words."""
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _utf8(path: str) -> bool:
    if path.isascii():
        return True
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a byte that is not UTF-8, decoded by the OS layer to a lone surrogate
        return False
    return True


def escaped(path: str) -> str:
    """``path`` with the bytes that are not UTF-8 shown as ``\\xNN`` (``bad\\xff.png``): printable, JSON-safe."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a discovery: it allocates a few objects per file and no cycles,
    and the collections those allocations trigger rescan them all (a third of a million-file discovery's time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def stem(path: str) -> str:
    """File name without directory and without all extensions ('im0001.ah.ppm.gz' -> 'im0001')."""
    name = path.rpartition("/")[2]
    if name in ("", "."):  # not a normalised path ('a/', 'a/.'): let pathlib find the name
        name = PurePosixPath(path).name
    return name.split(".", 1)[0] if not name.startswith(".") else name
