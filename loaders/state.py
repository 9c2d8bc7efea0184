"""Loader states: checking a saved state against the reader it is loaded into, and merging the states of every
rank and DataLoader worker of a run into one state that any other numbers of ranks and workers continue.

A reader's state (``MedShards``, ``SA1BStream``, ``TeacherJoin``) is a small dict of JSON types. In an exact epoch
it holds one cursor per canonical partition (the samples of that partition yielded so far), ``None`` for the
partitions the saving reader does not own; :func:`merge_states` takes the owned cursor of every partition.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable, Sequence

from . import partition

VERSION = 1

#: what torchdata's StatefulDataLoader calls its parts (torchdata.stateful_dataloader 0.11)
_SNAPSHOT, _WORKERS, _SINCE = "_snapshot", "_worker_snapshots", "_steps_since_snapshot"
_DATASET = "dataset_state"


def fingerprint(names: Iterable[str]) -> str:
    """A short digest of what a reader reads (shard names and sizes), so a state is not loaded on other data."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def check(saved: Any, identity: dict[str, Any], reader: Any) -> None:
    """Refuse a state that was not saved by a reader like ``reader`` (``identity``: what it must agree on)."""
    if not isinstance(saved, dict) or "kind" not in saved:
        hint = (" (a StatefulDataLoader state: pass it to StatefulDataLoader.load_state_dict, or merge_states([...]) "
                "it first)" if isinstance(saved, dict) and (_SNAPSHOT in saved or _DATASET in saved) else "")
        raise ValueError(f"not a loader state: expected the dict {identity['kind']}.state_dict() returns{hint}")
    for field, value in identity.items():
        if saved.get(field) != value:
            raise ValueError(f"the state was saved by a reader with {field}={saved.get(field)!r}, but {reader!r} has "
                             f"{field}={value!r}: load it into a reader built with the same data and parameters")


def owned_cursors(saved: Sequence[int | None] | None, parts: range, partitions: int) -> list[int | None]:
    """The ``partitions`` cursors of a reader that owns ``parts``: from ``saved`` (every owned partition must be
    there), else 0; ``None`` for the partitions it does not own."""
    cursors: list[int | None] = [None] * partitions
    for p in parts:
        value = 0 if saved is None else saved[p]
        if value is None:
            raise ValueError(f"the state has no cursor for partition {p}: it is one rank's or worker's state; "
                             f"resume on the same ranks and workers, or load merge_states() of every rank's state")
        cursors[p] = int(value)
    return cursors


def dataset_states(saved: dict[str, Any]) -> list[dict[str, Any]]:
    """The reader states inside ``saved``: a reader state itself, or every worker's in a ``StatefulDataLoader``
    state (single- or multi-process)."""
    if "kind" in saved:
        return [saved]
    if _SNAPSHOT in saved:
        if saved.get(_SINCE):
            raise ValueError(f"this StatefulDataLoader state is {saved[_SINCE]} batches past its last worker "
                             f"snapshot: build the loaders with snapshot_every_n_steps=1 to merge their states")
        workers = saved[_SNAPSHOT][_WORKERS]
        return [workers[k][_DATASET] for k in sorted(workers, key=str)]
    if _DATASET in saved and saved[_DATASET] is not None:
        return [saved[_DATASET]]
    raise ValueError("not a loader state: expected what MedShards/SA1BStream/TeacherJoin.state_dict() or "
                     "StatefulDataLoader.state_dict() returns")


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One state from the states of every rank of a run (``StatefulDataLoader.state_dict()`` or the reader's own
    ``state_dict()``, one per rank, any numbers of workers): load it with ``reader.load_state_dict(merged)`` on each
    rank of the next run, with any numbers of ranks and workers, before its loader is made; the rest of the epoch
    then comes exactly once over all ranks. Exact epochs only: a resampled epoch is drawn per reader."""
    parts = [s for saved in states for s in dataset_states(saved)]
    if not parts:
        raise ValueError("merge_states: no states given")
    kinds = {s["kind"] for s in parts}
    if len(kinds) > 1:
        raise ValueError(f"merge_states: states of different readers {sorted(kinds)}")
    if parts[0]["kind"] == "TeacherJoin":
        first = parts[0]
        if any(s["epoch"] != first["epoch"] or s["samples"] is None for s in parts):
            raise ValueError("merge_states: TeacherJoin states of different epochs, or over a reader without state")
        return {**first, "samples": merge_states([s["samples"] for s in parts])}
    if parts[0].get("mode") == "resampled":
        raise ValueError("merge_states: a resampled epoch is drawn per reader (rank x worker) and has no canonical "
                         "order to split again; resume it on the same ranks and workers (each rank loads its own "
                         "state), or start the next epoch on the new topology")
    head = {k: v for k, v in parts[0].items() if k != "cursors"}
    cursors: list[int | None] = [None] * len(parts[0]["cursors"])
    for s in parts:
        other = {k: v for k, v in s.items() if k != "cursors"}
        if other != head:
            diff = sorted(k for k in head.keys() | other.keys() if head.get(k) != other.get(k))
            raise ValueError(f"merge_states: the states disagree on {diff} ({[head.get(k) for k in diff]} vs "
                             f"{[other.get(k) for k in diff]}): they are not from one run's epoch")
        for p, value in enumerate(s["cursors"]):
            if value is None:
                continue
            if cursors[p] is not None:
                raise ValueError(f"merge_states: partition {p} is in two of the states: a rank's state was given "
                                 f"twice, or states of two runs were mixed")
            cursors[p] = value
    missing = [p for p, c in enumerate(cursors) if c is None]
    if missing:
        raise ValueError(f"merge_states: no state holds partitions {missing[:8]}{'...' if len(missing) > 8 else ''}"
                         f" ({len(missing)} of {len(cursors)}): pass the states of every rank")
    return {**head, "cursors": cursors}


class Resumable:
    """``state_dict`` / ``load_state_dict`` of a reader whose epoch is read over canonical partitions (or, with
    ``resampled`` True, drawn per reader). The reader gives ``_identity()`` (what a state must agree on),
    ``partitions``, ``rank``, ``world_size`` and ``epoch``; its ``__iter__`` starts with ``progress =
    self._begin(consumer)`` and advances ``progress["cursors"][p]`` (or ``progress["yielded"]``) before it yields
    each sample; its ``set_epoch`` calls ``_keep_resume``."""

    resampled = False
    epoch: int
    _identity: Callable[[], dict[str, Any]]
    partitions: int
    rank: int | None
    world_size: int | None
    _resume: dict[str, Any] | None = None  # a loaded state, for the next iteration of its epoch
    _progress: dict[str, Any] | None = None  # the running (or last) iteration's place in its epoch

    def _start(self, consumer: partition.Consumer) -> dict[str, Any]:
        """Where ``consumer``'s next iteration of the current epoch starts: the loaded state, else the start."""
        resume = self._resume if self._resume is not None and self._resume["epoch"] == self.epoch else None
        where = [consumer.rank, consumer.world_size, consumer.worker, consumer.num_workers]
        if self.resampled:
            if resume is not None and resume["consumer"] != where:
                raise ValueError(f"this resampled state was saved by reader {resume['consumer']} (rank, world_size, "
                                 f"worker, num_workers), not {where}: a resampled epoch is drawn per reader, so it "
                                 f"resumes on the same ranks and workers; start the next epoch to change them")
            return {"epoch": self.epoch, "consumer": where, "yielded": resume["yielded"] if resume else 0}
        cursors = owned_cursors(resume["cursors"] if resume else None, partition.owned(consumer, self.partitions),
                                self.partitions)
        return {"epoch": self.epoch, "consumer": where, "cursors": cursors}

    def _begin(self, consumer: partition.Consumer) -> dict[str, Any]:
        """The progress of an iteration that starts now (a loaded state is used up by it)."""
        progress = self._start(consumer)
        self._resume, self._progress = None, progress
        return progress

    def _keep_resume(self, epoch: int) -> None:
        """``set_epoch``: a loaded state of another epoch is dropped."""
        if self._resume is not None and self._resume["epoch"] != epoch:
            self._resume = None

    def state_dict(self) -> dict[str, Any]:
        """Where this reader stands in its epoch (small, picklable, JSON-serialisable): in exact mode one cursor
        (samples yielded) per canonical partition this reader owns (``None`` for the others), in resampled mode
        the samples this reader yielded. Inside a DataLoader worker it is that worker's; ``StatefulDataLoader``
        collects them. :func:`merge_states` turns the states of every rank and worker into one any topology
        loads."""
        consumer = partition.current_consumer(self.rank, self.world_size)
        where = [consumer.rank, consumer.world_size, consumer.worker, consumer.num_workers]
        progress = self._progress
        if progress is None or progress["epoch"] != self.epoch or progress["consumer"] != where:
            progress = self._start(consumer)
        out = {**self._identity(), "epoch": progress["epoch"]}
        if self.resampled:
            return {**out, "consumer": list(progress["consumer"]), "yielded": progress["yielded"]}
        return {**out, "cursors": list(progress["cursors"])}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from ``saved`` (a ``state_dict()``, or :func:`merge_states` of several): the next iteration of
        its epoch (which this selects) yields exactly the samples the saved run had not yielded yet, in the order
        it would have; an iteration of another epoch (``set_epoch``) starts that epoch whole."""
        check(saved, self._identity(), self)
        self.set_epoch(saved["epoch"])  # type: ignore[attr-defined]
        self._resume, self._progress = saved, None


__all__ = ["Resumable", "VERSION", "check", "dataset_states", "fingerprint", "merge_states", "owned_cursors"]
