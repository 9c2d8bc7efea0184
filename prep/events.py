"""What a build tells its caller: progress events (to an ``on_event`` callback) and the result with its summary.

The library never draws: the CLI turns the events into a progress bar and prints :meth:`BuildResult.summary`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from medprep.manifests import FAILURES, SPLITS, Manifest, human_bytes, join
from medprep.manifests.card import failure_kind


@dataclass(frozen=True)
class Planned:
    """The build is planned: ``total_samples`` planned samples (one per input; a volume counts once, its slices are
    counted when written) in ``tasks`` tasks; ``resumed_samples`` of them were finished by an interrupted run."""

    dataset: str
    total_samples: int
    tasks: int
    resumed_samples: int


@dataclass(frozen=True)
class InputDone:
    """One input of task ``task`` is done: it gave ``samples`` samples, or it ``failed``. Sent as each input
    finishes in a build that runs in this process; tasks run on dask report only their :class:`TaskDone`."""

    task: str
    samples: int
    failed: bool


@dataclass(frozen=True)
class TaskDone:
    """One task (planned shard) finished: ``planned`` inputs gave ``samples`` samples and ``failures`` failures."""

    task: str
    planned: int
    samples: int
    failures: int


@dataclass(frozen=True)
class Published:
    """The build is complete and visible at ``out``."""

    out: Path


BuildEvent = Union[Planned, InputDone, TaskDone, Published]
OnEvent = Callable[[BuildEvent], None]
SHOWN_REASON = 240  # characters of a failure's message shown in a summary line


def top_failures(failures: list[dict[str, Any]], n: int = 3) -> list[str]:
    """The ``n`` most common kinds of failure (reasons that differ only in words holding digits, such as file names,
    keys and sizes, are one kind), as ``COUNT x REASON (e.g. SOURCE_ID)`` lines with the real message of the kind's
    first failure."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for f in failures:
        kinds.setdefault(re.sub(r"[^\s(),;:'\"]*\d[^\s(),;:'\"]*", "#", failure_kind(f["reason"])), []).append(f)
    lines = []
    for group in sorted(kinds.values(), key=lambda g: -len(g))[:n]:
        reason = " ".join(group[0]["reason"].split())
        if len(reason) > SHOWN_REASON:
            reason = reason[: SHOWN_REASON - 3] + "..."
        lines.append(f"{len(group)} x {reason} (e.g. {group[0]['source_id']})")
    return lines


@dataclass
class BuildResult:
    """What a build produced."""

    out: Path | str  # a folder, or the URL of a build published to an object store
    manifest: Manifest
    failures: list[dict[str, Any]]
    seconds: float = 0.0
    skipped_tasks: int = 0
    reused: bool = False
    resumed_samples: int = 0  # samples of the tasks an interrupted run had finished (not converted by this run)

    @property
    def bytes(self) -> int:
        """Bytes of the build's shards."""
        return sum(s.bytes for s in self.manifest.shards)

    @property
    def rate(self) -> float | None:
        """Samples per second converted by this run (resumed samples not counted); None when it converted none."""
        fresh = self.manifest.counts["samples"] - self.resumed_samples
        return fresh / self.seconds if not self.reused and self.seconds and fresh > 0 else None

    @property
    def failures_file(self) -> str:
        """Where the failures are listed."""
        return join(self.out, self.manifest.path(FAILURES))

    def summary(self) -> str:
        """A few lines for people: counts per split, bytes, failure reasons and where they are listed, split-file
        matching, throughput of this run (or that nothing was written when the build was already up to date)."""
        c = self.manifest.counts
        order = {s: i for i, s in enumerate(SPLITS)}
        per_split = ", ".join(f"{k} {v}" for k, v in sorted(c["splits"].items(), key=lambda x: order.get(x[0], 9)))
        if self.reused:
            head = f"{self.manifest.dataset}: up to date, nothing written ({c['samples']} samples already built)"
        else:
            made = (f"{c['samples']} samples written" if c["converted"] == c["samples"]
                    else f"{c['converted']} converted ({c['samples']} samples)")
            head = (f"{self.manifest.dataset}: {c['inputs']} inputs found = {made} + {c['failures']} failures"
                    + ("" if c["inputs"] == c["converted"] + c["failures"] else "  (MISMATCH)"))
        lines = [head, f"  splits: {per_split or 'none'}; {len(self.manifest.shards)} shards, "
                       f"{human_bytes(self.bytes)} in {self.out}"]
        lines += [f"  failure: {line}" for line in top_failures(self.failures, 8)]
        if self.failures:
            lines.append(f"  failures listed in {self.failures_file}")
        rep = self.manifest.split_report
        if rep.get("split_file"):
            lines.append(f"  split file: {rep['matched']} matched, {len(rep['in_file_not_found'])} listed but not "
                         f"found, {len(rep['found_not_in_file'])} found but not listed")
        if not self.reused and self.seconds:
            rate = self.rate
            lines.append(f"  {self.seconds:.1f} s" + (f", {rate:.1f} samples/s" if rate is not None else "")
                         + (f" ({self.resumed_samples} samples in {self.skipped_tasks} shards resumed, not counted)"
                            if self.skipped_tasks else ""))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The result for programs (``medprep build --json``)."""
        c = self.manifest.counts
        return {"dataset": self.manifest.dataset, "out": str(self.out), "up_to_date": self.reused,
                "inputs": c["inputs"], "samples": c["samples"], "converted": c["converted"],
                "failures": c["failures"], "splits": c["splits"], "shards": len(self.manifest.shards),
                "bytes": self.bytes, "failures_file": self.failures_file if self.failures else None,
                "resumed_samples": self.resumed_samples, "seconds": round(self.seconds, 3),
                "samples_per_second": None if self.rate is None else round(self.rate, 2),
                "split_report": self.manifest.split_report}


__all__ = ["BuildEvent", "BuildResult", "InputDone", "OnEvent", "Planned", "Published", "TaskDone", "top_failures"]
