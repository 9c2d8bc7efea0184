"""One writer at a time per output (a built dataset, a teacher store run): an OS lock on a hidden file.

The lock file is locked with ``fcntl.flock`` for the whole write and names its holder (pid, host, start time,
command). The kernel releases the lock when the holder exits or is killed, so a killed writer leaves no lock behind:
the next one takes the file over (and logs whose it was). A writer that finds the lock held waits up to ``wait``
seconds, then stops with a message naming the holder. ``medprep.prep.lock`` (builds) and the teacher cache use it.
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

from .errors import MedprepError

POLL_S = 0.1
NAME_POLLS = 10  # polls for the name of a holder that has the lock but has not written its name yet


class LockBusy(MedprepError, RuntimeError):
    """Another process holds the lock (or the lock file cannot be made)."""


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


class OutputLock:
    """``with OutputLock(path, subject, command, wait):`` holds the lock file ``path`` of the output ``subject`` (how
    messages name it).

    Entering creates ``path``'s folder and the lock file; an unwritable location raises :attr:`error` naming it.
    Leaving removes the lock file, then releases it (a writer waiting on the removed file notices and locks the new
    one), and removes the folder again if it created it and nothing else was put there. Subclasses say what the
    holder is doing (:attr:`activity`) and what else the refused writer can do (:attr:`alternative`)."""

    error: type[Exception] = LockBusy
    activity = "being written by another process"
    alternative = "choose another output"
    option = "--out"  # the option that names the lock file's folder, in messages
    logger = "medprep.lock"  # where the lock logs a taken-over or unsupported lock

    def __init__(self, path: Path, subject: str, command: Sequence[str] | None = None, wait: float = 0.0):
        self.path, self.subject, self.wait = path, subject, wait
        self.folder = path.parent
        self.command = list(command) if command else [sys.executable, *sys.argv]
        self._fd: int | None = None
        self._made_parent = False

    def name_polls(self) -> int:
        """Polls for the name of a holder that has the lock but has not written it yet."""
        return NAME_POLLS

    def __enter__(self) -> OutputLock:
        deadline = time.monotonic() + self.wait
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                for _ in range(self.name_polls()):  # the holder writes its name right after locking: give it a moment
                    if holder:
                        break
                    time.sleep(POLL_S)
                    holder = _read(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise self.error(self._busy(holder)) from None
                time.sleep(POLL_S)
                continue
            except OSError as e:  # a file system without locks (some FUSE mounts): unlocked, say so
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                logging.getLogger(self.logger).warning(
                    "cannot lock %s (%s): make sure no other process writes %s at the same time", self.path,
                    e.strerror, self.subject)
            if not self._still_there(fd):  # the previous holder removed this file while we waited on it
                os.close(fd)
                continue
            previous = _read(fd)
            if previous and not _alive(previous):
                logging.getLogger(self.logger).info(
                    "taking over the lock of %s: its holder was killed (process %s is gone)", self.subject,
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
                self.folder.rmdir()  # only when empty: a writer that failed before writing anything
            except OSError:
                pass

    def _open(self) -> int:
        if self.folder.is_file():
            raise self.error(f"{self.option} {self.folder} is a file; expected a folder (created if missing)")
        retries = 2  # a writer stopping as this one starts removes the folder it made, when empty
        while True:
            try:
                if not self.folder.is_dir():
                    try:
                        self.folder.mkdir(parents=True)
                        self._made_parent = True
                    except FileExistsError:  # another writer starting at the same moment made it
                        if not self.folder.is_dir():
                            raise
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if isinstance(e, FileNotFoundError) and retries:
                    retries -= 1
                    continue
                raise self.error(f"{self.option} {self.folder}: cannot write there ({e.strerror or e}); choose a "
                                 f"folder you can create files in") from None

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
        return (f"{self.subject} is {self.activity}{waited}: {describe(holder)}{gone}; wait for it to finish (or "
                f"pass --wait SECONDS), or stop it, or {self.alternative}")


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


__all__ = ["LockBusy", "OutputLock", "describe"]
