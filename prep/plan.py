"""Planning a build: discover the inputs, key them, assign splits and cut each split into planned shards (tasks)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from medprep.manifests import SPLITS
from medprep.manifests.pixels import make_key

from .datasets import Converter, Failure, Record
from .params import BuildParams
from .sample import worst_case_bytes
from .splits import assign_splits
from .tree import LayoutError, SourceTree, natural_sorted, paused_gc
from .unclaimed import unclaimed


@dataclass(frozen=True)
class Task:
    """One planned output shard: which records go in it."""

    split: str
    index: int
    records: tuple[tuple[Record, str], ...]  # (record, key)

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


@dataclass(frozen=True)
class Plan:
    """What a build will do: the tasks in publishing order and what planning found."""

    tasks: list[Task]
    failures: list[Failure]  # inputs that failed before conversion (no mask, duplicate key, not in the split file)
    split_report: dict[str, Any]
    inputs: int  # inputs found (records + failures of discovery)
    root: str  # the folder prefix shared by all inputs; recorded paths are relative to it
    splits: list[str]  # the splits the rule or split file defines: a build must not leave them empty
    stamps: dict[str, tuple[int, int] | None]  # (size, mtime ns) of every file the tasks read, by recorded path

    def doc(self, params: dict[str, Any], version: str) -> dict[str, Any]:
        """The plan as recorded (its sha256 identifies a build): parameters, version, every task's keys."""
        return {"params": params, "medprep_version": version,
                "tasks": [[t.name, [k for _, k in t.records]] for t in self.tasks]}


def common_folder(paths: list[str]) -> str:
    """The folder prefix ('a/b/' or '') shared by all ``paths``: recorded paths are relative to it, so pointing
    --src at the dataset folder or at a folder above it gives the same bytes."""
    if not paths:
        return ""
    parts = [p.split("/")[:-1] for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "".join(f"{c}/" for c in common)


def plan(conv: Converter, tree: SourceTree, p: BuildParams) -> Plan:
    """Discover inputs, assign splits and cut each split into planned shards, in a seeded shuffled order."""
    with paused_gc():
        records, failures = conv.discover(tree)
    failures += unclaimed(conv, tree, records, failures)  # every other file in the inputs' folders: counted
    if not records and not failures:
        raise LayoutError(f"{conv.name}: found no input files under {tree.label}; expected {conv.layout}")
    inputs = len(records) + len(failures)
    keyed: dict[str, Record] = {}
    for r in natural_sorted(records, lambda r: r.source_id):
        key = make_key(conv.name, r.source_id)
        if key in keyed:
            failures.append(Failure(r.source_id, tuple(r.files()),
                                    f"duplicate sample key {key} (also {keyed[key].source_id})", stage="key"))
        else:
            keyed[key] = r
    assigned, report, defined = assign_splits(conv, list(keyed.values()), p, failures)
    root = common_folder([f for r in records for f in r.files()] + [f for x in failures for f in x.files])
    per_shard = p.shard_samples or max(1, p.shard_bytes // max(1, worst_case_bytes(p) // 2))
    tasks = []
    for split in SPLITS + tuple(sorted(set(assigned.values()) - set(SPLITS))):
        members = [(r, k) for k, r in keyed.items() if assigned.get(r.source_id) == split]
        random.Random(f"{p.seed}:{split}").shuffle(members)  # mixed shards; the order is part of the recorded plan
        tasks += [Task(split, i // per_shard, tuple(members[i: i + per_shard]))
                  for i in range(0, len(members), per_shard)]
    stamps = {f[len(root):]: tree.stamp(f) for t in tasks for r, _ in t.records for f in r.files()}
    return Plan(tasks, failures, report, inputs, root, defined, stamps)


__all__ = ["Plan", "Task", "common_folder", "plan"]
