"""Read-only view of a dataset download: list files, read bytes, locate the dataset root in it."""

from __future__ import annotations

import fnmatch
import os
import re
from functools import cached_property
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


class LayoutError(FileNotFoundError):
    """The source does not have the layout a converter expects; the message says what and where."""


def natural_key(s: str) -> tuple:
    """Sort key that orders '2' before '10' (datasets number their files without zero padding)."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s))


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
        """All files below the root, sorted, as relative POSIX paths (hidden files and __MACOSX skipped)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
            rel = PurePosixPath(Path(dirpath).relative_to(self.root).as_posix())
            out.extend(str(rel / f) if str(rel) != "." else f for f in filenames if not f.startswith("."))
        return sorted(out)

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def exists(self, rel: str) -> bool:
        return rel in self._fileset

    @cached_property
    def _fileset(self) -> frozenset[str]:
        return frozenset(self.files)

    def glob(self, pattern: str, ignore_case: bool = False) -> list[str]:
        """Relative paths matching a glob in which ``*`` does not cross '/', naturally sorted."""
        rx = re.compile(_glob_regex(pattern), re.IGNORECASE if ignore_case else 0)
        return sorted((f for f in self.files if rx.fullmatch(f)), key=natural_key)

    def top_level(self, limit: int = 12) -> str:
        entries = sorted({f.split("/", 1)[0] + ("/" if "/" in f else "") for f in self.files})
        shown = ", ".join(entries[:limit]) + (f", ... ({len(entries)} entries)" if len(entries) > limit else "")
        return shown or "nothing"

    def find_root(self, marker: str, dataset: str, max_depth: int = 3) -> str:
        """The prefix below which ``marker`` (a glob) matches, searching the root and up to ``max_depth`` levels.

        Users pass either the dataset folder itself or a folder above it; both work. Raises LayoutError naming
        what was expected and what was found.
        """
        prefixes = sorted({"/".join(f.split("/")[:d]) for f in self.files for d in range(0, max_depth + 1)
                           if f.count("/") >= d}, key=lambda p: (p.count("/") + bool(p), p))
        for prefix in prefixes:
            pat = f"{_escape(prefix)}/{marker}" if prefix else marker
            if self.glob(pat):
                return prefix
        archives = [f for f in self.files if f.lower().endswith(ARCHIVE_SUFFIXES) and "/" not in f]
        hint = (f"; {self.label} holds {', '.join(archives)}: unpack it or pass the archive as --src"
                if archives else "; pass the folder the official download unpacks to")
        raise LayoutError(
            f"{dataset}: expected {marker} under {self.label} (or a subfolder of it); found {self.top_level()}{hint}"
        )


def _escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


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


def stem(path: str) -> str:
    """File name without directory and without all extensions ('im0001.ah.ppm.gz' -> 'im0001')."""
    name = PurePosixPath(path).name
    return name.split(".", 1)[0] if not name.startswith(".") else name


def open_source(src: str | os.PathLike) -> SourceTree:
    """The tree of a download as the user passed it: an archive file (zip/tar, read in place), a folder without
    subfolders holding the download's archives side by side, or the extracted folder."""
    from .archive import ArchiveTree, holds_archives

    path = Path(src)
    if (path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)) or (path.is_dir() and holds_archives(path)):
        return ArchiveTree(path)
    return SourceTree(path)
