"""Progress of the long commands (``build``, ``cache-teacher``) for people, drawn by the CLI from library events.

On a terminal a ``rich`` bar counts samples with their rate and time left, the failures so far and the samples an
interrupted run had finished (shown apart, not counted in the rate). Elsewhere (a pipe, a log file) a plain line
every ``every`` seconds says the same, plus a last line when the work ends; ``quiet`` draws nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bar
from rich.text import Text


class Progress:
    """One progress display: :meth:`start` once the total is known, :meth:`advance` as work is done, :meth:`close`
    at the end (also as a context manager)."""

    def __init__(self, label: str, unit: str = "samples", every: float = 10.0, quiet: bool = False,
                 stream: IO[str] | None = None):
        self.label, self.unit, self.every = label, unit, every
        self.stream = stream or sys.stderr
        self.mode = "off" if quiet else "bar" if _isatty(self.stream) else "lines"
        self.total = self.done = self.resumed = self.failures = 0
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar: Any = None
        self._task: Any = None
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, total: int, resumed: int = 0) -> None:
        """``total`` units in all, ``resumed`` of them already done by an earlier run."""
        self.total, self.resumed, self.done = total, resumed, resumed
        self._t0 = time.monotonic()
        if self.mode == "bar":
            self._start_bar()
        elif self.mode == "lines" and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="medprep-progress", daemon=True)
            self._ticker.start()

    def advance(self, n: int = 1, failures: int = 0) -> None:
        """``n`` more units done, ``failures`` of them failed."""
        with self._lock:
            self.done += n
            self.failures += failures
        if self._bar is not None:
            self._bar.update(self._task, advance=n, extra=self._extra())

    def close(self) -> None:
        """Stop drawing; in line mode write the last line."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
            self._write(self.line(final=True))
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    @property
    def rate(self) -> float | None:
        """Units per second done by this run (resumed units not counted); None before any."""
        fresh, elapsed = self.done - self.resumed, time.monotonic() - self._t0
        return fresh / elapsed if fresh > 0 and elapsed > 0 else None

    def line(self, final: bool = False) -> str:
        """The plain status line: ``build drive: 120/400 samples (30%), 12.5 samples/s, 0:00:22 left, ...``."""
        with self._lock:
            done, total = self.done, self.total
        rate = self.rate
        parts = [f"{self.label}: {done}/{total} {self.unit}" + (f" ({100 * done // total}%)" if total else "")]
        if rate is not None:
            parts.append(f"{rate:.1f} {self.unit}/s")
        if final:
            parts.append(f"{_clock(time.monotonic() - self._t0)} elapsed")
        elif rate is not None and total > done:
            parts.append(f"{_clock((total - done) / rate)} left")
        parts.append(self._extra())
        return ", ".join(parts)

    def _extra(self) -> str:
        extra = [f"{self.failures} failures"] if self.failures or self.mode == "lines" else []
        if self.resumed:
            extra.append(f"{self.resumed} resumed")
        return ", ".join(extra)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._write(self.line())

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _start_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(self.unit),
                        _Rate(self.unit), TimeRemainingColumn(), TextColumn("{task.fields[extra]}"),
                        console=Console(file=self.stream), transient=False)
        # the resumed units are the task's start, not an advance: rich's speed (and so the time left) leaves them out
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.resumed, extra=self._extra())
        self._bar.start()


class _Rate(ProgressColumn):
    """The task's speed in ``unit``/s (rich's estimate over the recent advances)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else "")


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = ["Progress"]
