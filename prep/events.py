"""What a build tells its caller: progress events (to an ``on_event`` callback) and the result with its summary.

The library never draws: the CLI turns the events into a progress bar and prints :meth:`BuildResult.summary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from medprep.manifests import Manifest


@dataclass(frozen=True)
class Planned:
    """The build is planned: ``total_samples`` planned samples (one per input; a volume counts once, its slices are
    counted when written) in ``tasks`` tasks; ``resumed_samples`` of them were finished by an interrupted run."""

    dataset: str
    total_samples: int
    tasks: int
    resumed_samples: int


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


BuildEvent = Union[Planned, TaskDone, Published]
OnEvent = Callable[[BuildEvent], None]


@dataclass
class BuildResult:
    """What a build produced."""

    out: Path
    manifest: Manifest
    failures: list[dict[str, Any]]
    seconds: float = 0.0
    skipped_tasks: int = 0
    reused: bool = False

    def summary(self) -> str:
        """A few lines for people: counts per split, failure reasons, split-file matching, throughput."""
        c = self.manifest.counts
        per_split = ", ".join(f"{k} {v}" for k, v in c["splits"].items())
        made = (f"{c['samples']} samples written" if c["converted"] == c["samples"]
                else f"{c['converted']} converted ({c['samples']} samples)")
        lines = [
            f"{self.manifest.dataset}: {c['inputs']} inputs found = {made} + {c['failures']} failures"
            + ("" if c["inputs"] == c["converted"] + c["failures"] else "  (MISMATCH)"),
            f"  splits: {per_split or 'none'}; {len(self.manifest.shards)} shards in {self.out}",
        ]
        reasons: dict[str, int] = {}
        for f in self.failures:
            kind = f["reason"].split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        lines += [f"  failure: {n} x {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])[:8]]
        rep = self.manifest.split_report
        if rep.get("split_file"):
            lines.append(f"  split file: {rep['matched']} matched, {len(rep['in_file_not_found'])} listed but not "
                         f"found, {len(rep['found_not_in_file'])} found but not listed")
        if not self.reused and self.seconds:
            lines.append(f"  {self.seconds:.1f} s, {c['samples'] / self.seconds:.1f} samples/s"
                         + (f" ({self.skipped_tasks} shards resumed)" if self.skipped_tasks else ""))
        return "\n".join(lines)


__all__ = ["BuildEvent", "BuildResult", "OnEvent", "Planned", "Published", "TaskDone"]
