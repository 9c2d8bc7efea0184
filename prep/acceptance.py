"""When a build may publish: the rules of ``--strict``, ``--max-failures`` and ``--allow-empty-split`` in one place.

They are checked twice: on the plan, before any work (a split rule or split file that leaves a split without inputs
means the parameters are wrong), and on the tasks' results, before anything is published (too many failures, nothing
converted, a split whose inputs all failed). A refused build publishes nothing; its finished parts are kept for the
next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import top_failures
from .params import BuildError, FailureLimit, InputsFailed
from .plan import Plan
from .task import TaskResult


@dataclass(frozen=True)
class Acceptance:
    """``strict``: no failure accepted; ``limit``: how many may fail (``--max-failures``); ``allow_empty_split``: a
    split may come out empty."""

    strict: bool = False
    limit: FailureLimit = field(default_factory=FailureLimit)
    allow_empty_split: bool = False

    def check_plan(self, planned: Plan) -> None:
        """Raise :class:`BuildError` when the split rule or file leaves one of the splits it defines without inputs
        (unless ``allow_empty_split``)."""
        planned_splits = {t.split for t in planned.tasks}
        empty = [s for s in planned.splits if s not in planned_splits]
        if empty and planned_splits and not self.allow_empty_split:
            rule = planned.split_report.get("rule")
            by = f" --group-by {planned.split_report['group_by']}" if planned.split_report.get("group_by") else ""
            counts = ", ".join(f"{s} {sum(len(t.records) for t in planned.tasks if t.split == s)}"
                               for s in planned.splits)
            raise BuildError(f"split rule {rule}{by} leaves {', '.join(empty)} empty ({counts}); pass "
                             f"--allow-empty-split to build it anyway, or choose another --split-rule, --group-by or "
                             f"--split-file")

    def check_results(self, planned: Plan, results: list[TaskResult], failures: list[dict[str, Any]],
                      partial: Path | str) -> None:
        """Raise :class:`InputsFailed` (nothing is published; the finished parts stay in ``partial``) when the
        inputs failed more than the build accepts: any with ``strict``, all of them, more than ``limit``, or all
        inputs of a split (unless ``allow_empty_split``)."""
        kept = f"nothing was published; finished parts are kept in {partial} for the next run"
        if self.strict and failures:
            shown = "\n  ".join(f"{f['source_id']}: {f['reason']}" for f in failures[:10])
            raise InputsFailed(f"--strict: {len(failures)} input(s) could not be converted:\n  {shown}\n({kept})")
        if not any(r.rows for r in results):
            raise InputsFailed(f"nothing was converted: all {planned.inputs} inputs failed:{_listed(failures)}\n"
                               f"({kept})")
        if self.limit.exceeded(failures, planned.inputs):
            if self.limit.count is None and self.limit.percent is None:
                params = [f for f in failures if f.get("stage") == "params"]
                raise InputsFailed(f"{len(params)} of {planned.inputs} inputs failed because of the parameters:"
                                   f"{_listed(params)}\n(fix the parameters, or pass --max-failures N or P% to accept "
                                   f"such failures; {kept})")
            raise InputsFailed(f"{len(failures)} of {planned.inputs} inputs failed, more than {self.limit} accepts:"
                               f"{_listed(failures)}\n({kept})")
        written = {row["split"] for r in results for row in r.rows}
        empty = [s for s in planned.splits if s not in written and any(t.split == s for t in planned.tasks)]
        if empty and not self.allow_empty_split:
            ids = {r.source_id for t in planned.tasks if t.split in empty for r, _ in t.records}
            raise InputsFailed(f"split {', '.join(empty)} came out empty: all its inputs failed:"
                               f"{_listed([f for f in failures if f['source_id'] in ids])}\n(pass --allow-empty-split "
                               f"to publish it anyway; {kept})")


def _listed(failures: list[dict[str, Any]]) -> str:
    """The top failure reasons, one per indented line."""
    return "".join(f"\n  {line}" for line in top_failures(failures))


__all__ = ["Acceptance"]
