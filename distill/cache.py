"""``cache_teacher``: one cache run from its :class:`~medprep.distill.params.CacheParams` (what it writes) and
:class:`~medprep.distill.params.CacheExecution` (how), in this process or on one dask worker per device;
``cache_corpus``: several sources into one store, a run each. The CLI's ``cache-teacher`` is a thin wrapper over
them."""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from fsspec.implementations.local import LocalFileSystem

from medprep.manifests import MANIFEST, fs_and_path
from medprep.manifests.lock import OutputLock

from .distributed import write_distributed
from .events import CacheEvent, OnEvent, RunOpened, Skipped
from .params import CacheExecution, CacheParams
from .pipeline import open_run, write_shards
from .store import FeatureStore
from .teachers import Teacher

#: the CacheParams fields that decide the teacher (runs sharing them share one loaded teacher)
TEACHER_FIELDS = ("encoder", "checkpoint", "encoder_kwargs", "normalize", "resize")


@dataclass
class CacheResult:
    """What one call of :func:`cache_teacher` did."""

    store: FeatureStore
    shards_written: list[int]
    shards_skipped: list[int]
    images: int
    #: samples whose image could not be read, skipped under ``max_failures`` (not done: a rerun tries them again;
    #: in-process runs only, dask workers report theirs in their logs)
    skipped: list[Skipped] = field(default_factory=list)


def cache_teacher(params: CacheParams, shards: Sequence[int] | None = None, on_event: OnEvent | None = None,
                  execution: CacheExecution = CacheExecution()) -> CacheResult:
    """Cache the teacher features of ``params.source`` into run ``params.run`` of the zarr store ``params.out``.

    Opens the run once (creating it, or checking that it was made with the same parameters), then writes the zarr
    shards ``shards`` (default: all) that are not done yet; a killed run resumes where it stopped. ``execution``:
    how (device, decode threads, ...); with ``execution.devices`` or ``execution.scheduler`` the shards are dealt
    to one dask worker per device. ``on_event`` receives :class:`~medprep.distill.events.RunOpened` once, then
    :class:`~medprep.distill.events.Encoded`.
    """
    return _cache(params, execution, params.teacher(), shards, on_event)


def cache_corpus(params: Sequence[CacheParams], on_event: OnEvent | None = None,
                 execution: CacheExecution = CacheExecution()) -> list[CacheResult]:
    """Cache several sources into their runs (e.g. :func:`~medprep.distill.params.per_source`), one after another,
    loading the teacher once; each run is resumable on its own. ``on_event`` and ``execution``: as
    :func:`cache_teacher`, per run.

    Refuses two entries that write the same run of the same store.
    """
    seen: set[tuple[str, str]] = set()
    for p in params:
        if (p.out, p.run) in seen:
            raise ValueError(f"run {p.run!r} of {p.out} is named twice: give each source its own run")
        seen.add((p.out, p.run))
    results, teacher, key = [], None, None
    for p in params:
        if teacher is None or _teacher_key(p) != key:
            teacher, key = p.teacher(), _teacher_key(p)
        results.append(_cache(p, execution, teacher, None, on_event))
    return results


def _teacher_key(params: CacheParams) -> tuple:
    return tuple(repr(getattr(params, f)) for f in TEACHER_FIELDS)


class RunLock(OutputLock):
    """The lock of one run of a local teacher store: ``<store>/.<run>.lock`` (readers list runs without it), held
    while the run is created and written; a refusal names the holder."""

    activity = "being written by another cache-teacher"
    alternative = "choose another --run"

    def __init__(self, store: str, run: str, wait: float = 0.0):
        super().__init__(Path(store) / f".{run}.lock", f"run {run!r} of {store}", wait=wait)


@contextlib.contextmanager
def run_lock(params: CacheParams, wait: float = 0.0) -> Iterator[None]:
    """Hold the lock of run ``params.run`` of a local store, waiting up to ``wait`` seconds for another holder (stores
    on object storage are not locked: keep to one writer per run there yourself)."""
    fs, path = fs_and_path(params.out)
    if not isinstance(fs, LocalFileSystem):
        yield
        return
    with RunLock(path, params.run, wait):
        yield


def refuse_inside_build(out: str) -> None:
    """Refuse a store at or inside a built dataset folder (one holding ``manifest.json``): it would change that
    build, which ``medprep verify`` then fails."""
    fs, path = fs_and_path(out)
    folder = path.rstrip("/")
    while folder:
        if fs.exists(posixpath.join(folder, MANIFEST)):
            raise ValueError(f"--out {out} is inside the built dataset {folder} (it holds {MANIFEST}): a store "
                             f"written there changes that build and 'medprep verify' fails it; put the store beside "
                             f"it, e.g. --out {posixpath.join(posixpath.dirname(folder) or '.', 'teacher.zarr')}")
        parent = posixpath.dirname(folder)
        folder = "" if parent == folder else parent


def _cache(params: CacheParams, execution: CacheExecution, teacher: Teacher, shards: Sequence[int] | None,
           on_event: OnEvent | None) -> CacheResult:
    refuse_inside_build(params.out)
    with run_lock(params, execution.wait):
        return _cache_locked(params, execution, teacher, shards, on_event)


def _cache_locked(params: CacheParams, execution: CacheExecution, teacher: Teacher, shards: Sequence[int] | None,
                  on_event: OnEvent | None) -> CacheResult:
    skipped: list[Skipped] = []

    def report(event: CacheEvent) -> None:
        if isinstance(event, Skipped):
            skipped.append(event)
        if on_event is not None:
            on_event(event)

    source = params.open_source()
    store = open_run(params, teacher, source, execution.worker_devices[0])
    wanted = range(store.nshards) if shards is None else list(shards)
    if any(not 0 <= s < store.nshards for s in wanted):
        raise ValueError(f"shard indices must be in [0, {store.nshards}), got {sorted(wanted)}")
    done = store.done_shards()
    todo = [s for s in wanted if not done[s]]
    done_before = [s for s in wanted if done[s]]
    images = sum(len(store.indices(s)) for s in todo) * len(store.views)
    if on_event is not None:
        resumed = sum(len(store.indices(s)) for s in done_before) * len(store.views)
        on_event(RunOpened(store.url, store.run, store.nshards, todo, images, resumed))
    if execution.distributed:
        written = write_distributed(store, params, execution, todo, on_event)
    else:
        written = write_shards(store, teacher, source, params, execution, todo, execution.device, report)
    return CacheResult(store, written, done_before, images, skipped)


__all__ = ["CacheResult", "RunLock", "cache_corpus", "cache_teacher", "refuse_inside_build", "run_lock"]
