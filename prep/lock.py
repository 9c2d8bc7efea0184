"""One build at a time per output dataset: an OS lock on a hidden file beside the dataset folder.

``.<name>.lock`` beside ``<name>/`` is locked with ``fcntl.flock`` for the whole build and names its holder (pid,
host, start time, command). The kernel releases the lock when the holder exits or is killed, so a killed build
leaves no lock behind: the next build takes the file over (and logs whose it was). A build that finds the lock
held waits up to ``wait`` seconds, then stops with a message naming the holder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .params import BuildError

log = logging.getLogger("medprep.build")
POLL_S = 0.1
NAME_POLLS = 10  # polls for the name of a holder that has the lock but has not written its name yet


def lock_path(out: Path) -> Path:
    """The lock file of the output dataset folder ``out``: the hidden sibling ``.<name>.lock``."""
    return out.parent / f".{out.name}.lock"


def describe(holder: dict[str, Any]) -> str:
    """'pid 123 on host h since 2024-01-01T10:00:00+00:00 (medprep build ...)' for a lock file's content."""
    if not holder:
        return "a process that has not written its name yet"
    command = " ".join(holder.get("command") or []) or "no command recorded"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')} ({command})"


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder's process still runs (True when it ran on another host: that cannot be told from here)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DatasetLock:
    """``with DatasetLock(out, command, wait):`` holds the lock of the output dataset ``out`` (a folder path).

    Entering creates ``out``'s parent folder and the lock file; an unwritable location raises :class:`BuildError`
    naming it. Leaving removes the lock file, then releases it (a build waiting on the removed file notices and
    locks the new one), and removes the parent folder again if it created it and nothing else was put there."""

    def __init__(self, out: Path, command: Sequence[str] | None = None, wait: float = 0.0):
        self.out, self.path, self.wait = out, lock_path(out), wait
        self.command = list(command) if command else [sys.executable, *sys.argv]
        self._fd: int | None = None
        self._made_parent = False

    def __enter__(self) -> DatasetLock:
        deadline = time.monotonic() + self.wait
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                for _ in range(NAME_POLLS):  # the holder writes its name right after locking: give it a moment
                    if holder:
                        break
                    time.sleep(POLL_S)
                    holder = _read(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise BuildError(self._busy(holder)) from None
                time.sleep(POLL_S)
                continue
            except OSError as e:  # a file system without locks (some FUSE mounts): build unlocked, say so
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                log.warning("cannot lock %s (%s): make sure no other build writes %s at the same time",
                            self.path, e.strerror, self.out)
            if not self._still_there(fd):  # the previous holder removed this file while we waited on it
                os.close(fd)
                continue
            previous = _read(fd)
            if previous and not _alive(previous):
                log.info("taking over the lock of %s: that build was killed (process %s is gone)", self.out,
                         previous.get("pid"))
            _write(fd, {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                        "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            self._fd = fd
            return self

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)
        if self._made_parent:
            try:
                self.out.parent.rmdir()  # only when empty: a build that failed before writing anything
            except OSError:
                pass

    def _open(self) -> int:
        if self.out.parent.is_file():
            raise BuildError(f"--out {self.out.parent} is a file; expected a folder (created if missing)")
        retries = 2  # a build stopping as this one starts removes the parent folder it made, when empty
        while True:
            try:
                if not self.out.parent.is_dir():
                    try:
                        self.out.parent.mkdir(parents=True)
                        self._made_parent = True
                    except FileExistsError:  # another build starting at the same moment made it
                        if not self.out.parent.is_dir():
                            raise
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if isinstance(e, FileNotFoundError) and retries:
                    retries -= 1
                    continue
                raise BuildError(f"--out {self.out.parent}: cannot write there ({e.strerror or e}); choose a folder "
                                 f"you can create files in") from None

    def _still_there(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _busy(self, holder: dict[str, Any]) -> str:
        waited = f" (waited {self.wait:g} s)" if self.wait else ""
        gone = ("; its process is gone, but a process it started still holds the lock"
                if holder and not _alive(holder) else "")
        return (f"{self.out} is being built by another build{waited}: {describe(holder)}{gone}; wait for it to "
                f"finish (or pass --wait SECONDS), or stop it, or choose another --out")


def _read(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        doc = json.loads(os.read(fd, 1 << 16) or b"{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write(fd: int, holder: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode())


__all__ = ["DatasetLock", "describe", "lock_path"]
