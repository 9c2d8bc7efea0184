"""The build driver: plan (``plan.py``) -> run the tasks (``task.py``, in process or on dask) -> publish.

One build at a time writes a dataset (``lock.py``: an OS lock beside it, naming its holder). Every task writes its
shard(s) under temporary names in its plan's folder ``.<name>.partial/<plan>/`` beside the dataset folder and records
its result there last, so a killed build resumes by skipping finished tasks whose inputs are unchanged and produces
the same bytes. When all tasks are done and the failures are acceptable (``--strict``, ``--max-failures``, no empty
split, something converted), ``publish.py`` assembles the final folder and swaps it in: a reader sees no build, the
previous one or the new one, never a partial one. A build published to an object store (``--out s3://...``) works
in a build folder there instead and publishes by writing its manifest last (``publish.py``). A rerun with the same
plan and unchanged inputs (``inputs.py``) returns the finished build.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from medprep import __version__
from medprep.manifests import dumps, sha256_bytes
from medprep.manifests.fsio import configure, is_remote, join, local_path
from medprep.manifests.runner import WORKER_ENV, DaskRunner, WorkerLost

from .archive import ArchiveTree, open_tree
from .datasets import Converter, looks_like
from .events import BuildResult, InputDone, OnEvent, Planned, Published, TaskDone, top_failures
from .inputs import STAMPS, contents_sha256, digest, stamps_record, unchanged
from .lock import DatasetLock
from .params import BuildError, BuildParams, FailureLimit, InputsFailed
from .plan import Plan, Task, plan
from .publish import build_folder, discard, existing_build, existing_remote, plan_staging, prune, publish, swap_in
from .task import load_done, run_task
from .tree import LayoutError, SourceTree, escaped, natural_key

log = logging.getLogger("medprep.build")

SRC_URL = ("a download is read from a local folder or archive; copy it down first (e.g. 'aws s3 sync', "
           "'huggingface-cli download') and pass the local path")


def build(
    params: BuildParams | str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    strict: bool = False,
    overwrite: bool = False,
    max_failures: FailureLimit | int | str | None = None,
    allow_empty_split: bool = False,
    wait: float = 0.0,
    on_event: OnEvent | None = None,
    command: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    keep_generations: int = 2,
    **fields: Any,
) -> BuildResult:
    """Build a dataset from its official layout under ``src`` into ``out/<dataset>/`` (``out`` is the parent
    folder, as the CLI's ``--out``; the folder is named after the dataset, or its ``name`` option). ``src`` is a
    local path or ``file://`` URL; ``out`` may also be an object-store URL (``s3://bucket/prefix``, any fsspec URL;
    ``storage_options`` such as ``{"endpoint_url": ...}`` or the ``FSSPEC_S3_*``/``AWS_*`` environment reach the
    workers with each task): the tasks upload finished shards into a build folder of their own there and the
    manifest is written last, in one PUT, so readers see the previous build or this one; earlier build folders are
    removed once it is in place, the ``keep_generations`` newest (this one included) kept for readers still
    reading them. An object store has no lock: run one build at a time per URL.

    ``params``: the :class:`BuildParams`, or a dataset name with the fields and converter options as keywords
    (``build("drive", src, out, size=256)`` builds ``BuildParams.of("drive", size=256)``). ``workers`` > 1 or a dask
    ``scheduler`` address run the tasks on dask. Nothing is published (:class:`InputsFailed`) when no input
    converts, when a split the rule or split file defines comes out empty (unless ``allow_empty_split``), or when
    more inputs fail than ``max_failures`` accepts (a count, ``"2%"`` of the inputs, or by default none failing
    because of the parameters); ``strict`` accepts no failure. A build running on the same dataset holds its lock:
    this one waits up to ``wait`` seconds, then raises :class:`BuildError` naming it. ``on_event`` receives
    :class:`Planned`, :class:`InputDone` (in-process runs), :class:`TaskDone` and :class:`Published` events;
    ``command`` (the CLI passes ``sys.argv``) is recorded with the dataset's folder in the card beside the manifest,
    and ``recipe.toml`` records the build for ``medprep build --config``. Reruns with the same parameters resume an
    interrupted build or return the finished one unchanged (rebuilt when its inputs' contents changed); a finished
    build with other parameters or inputs is replaced only with ``overwrite=True``, and only if ``out/<dataset>`` is
    provably a medprep build (nothing else is ever deleted).
    """
    if isinstance(params, BuildParams):
        if fields:
            raise TypeError(f"build() got a BuildParams and the keywords {sorted(fields)}: pass one or the other")
        p = params
    else:
        p = BuildParams.of(params, **fields)
    limit = FailureLimit.parse(max_failures)
    emit: OnEvent = on_event or (lambda event: None)
    t0 = time.perf_counter()
    conv = p.converter()
    if keep_generations < 1:
        raise ValueError(f"--keep-generations {keep_generations}: expected 1 or more (the new build is one of them)")
    remote = is_remote(out)
    if remote:
        configure(out, storage_options)
        out = join(out, conv.name)
    else:
        out = local_path(out, "--out", "") / conv.name  # no URL comes here: is_remote took them all
    src = local_path(src, "--src", SRC_URL)
    tree = open_tree(src)
    split_sha = sha256_bytes(Path(p.split_file).read_bytes()) if p.split_file else None
    with nullcontext() if remote else DatasetLock(out, command, wait):
        try:
            planned = plan(conv, tree, p)
        except LayoutError as e:
            raise LayoutError(f"{e}{_looks_like_hint(tree, conv)}") from None
        plan_sha = sha256_bytes(dumps(planned.doc(p.recorded(split_sha), __version__)))
        if not allow_empty_split:
            _planned_splits_filled(planned)
        old = existing_remote(out) if remote else existing_build(out)
        if old is not None:
            same_plan = old.manifest.params.get("plan_sha256") == plan_sha
            if same_plan and unchanged(old, planned, tree):
                log.info("%s is up to date", out)
                if remote:  # an earlier run may have stopped after its manifest, before cleaning up
                    prune(out, old.manifest.folder, keep_generations)
                return BuildResult(out, old.manifest, old.failures(), reused=True)
            if not same_plan and not overwrite:
                raise BuildError(f"{out} already holds a build of {old.name} with other parameters or inputs; "
                                 f"pass --overwrite to replace it or choose another --out")

        folder = build_folder(plan_sha, digest(planned.stamps)) if remote else ""
        partial = join(out, folder, "parts") if remote else plan_staging(out, plan_sha)
        done = {t.name: r for t in planned.tasks if (r := load_done(partial, t, planned.stamps)) is not None}
        todo = [t for t in planned.tasks if t.name not in done]
        emit(Planned(conv.name, sum(len(t.records) for t in planned.tasks), len(planned.tasks),
                     sum(len(t.records) for t in planned.tasks if t.name in done)))
        resumed = sum(len(r["rows"]) for r in done.values())
        done.update(_run(todo, str(tree.root), planned.root, partial, p, workers, scheduler, emit, storage_options))
        results = [done[t.name] for t in planned.tasks]

        failures = [{**f.row(), "files": [x[len(planned.root):] for x in f.files]} for f in planned.failures]
        failures += [f for r in results for f in r["failures"]]
        failures.sort(key=lambda f: natural_key(f["source_id"]))
        _accepted(planned, results, failures, strict, limit, allow_empty_split, partial)
        # paths and arguments that are not UTF-8 are recorded with those bytes escaped, as JSON needs
        origin = {"command": [escaped(a) for a in command] if command else None,
                  "source": escaped(_source(src, tree, planned.root, conv)), STAMPS: stamps_record(planned)}
        if remote:
            manifest = publish(out, partial, planned, results, failures, p, conv, split_sha, plan_sha, origin,
                               contents_sha256(results), folder)
            prune(out, folder, keep_generations)
        else:
            staged = partial / "publish"
            if staged.exists():
                shutil.rmtree(staged)  # an earlier publish was interrupted: redo it from the kept parts
            staged.mkdir()
            manifest = publish(staged, partial, planned, results, failures, p, conv, split_sha, plan_sha, origin,
                               contents_sha256(results))
            swap_in(staged, out, partial)
            discard(partial)
        emit(Published(out))
    return BuildResult(out, manifest, failures, time.perf_counter() - t0, skipped_tasks=len(planned.tasks) - len(todo),
                       resumed_samples=resumed)


def _planned_splits_filled(planned: Plan) -> None:
    """Raise :class:`BuildError` when the split rule or file leaves one of the splits it defines without inputs
    (before any work: the parameters are wrong for these inputs)."""
    planned_splits = {t.split for t in planned.tasks}
    empty = [s for s in planned.splits if s not in planned_splits]
    if empty and planned_splits:
        rule = planned.split_report.get("rule")
        by = f" --group-by {planned.split_report['group_by']}" if planned.split_report.get("group_by") else ""
        counts = ", ".join(f"{s} {sum(len(t.records) for t in planned.tasks if t.split == s)}" for s in planned.splits)
        raise BuildError(f"split rule {rule}{by} leaves {', '.join(empty)} empty ({counts}); pass "
                         f"--allow-empty-split to build it anyway, or choose another --split-rule, --group-by or "
                         f"--split-file")


def _accepted(planned: Plan, results: list[dict[str, Any]], failures: list[dict[str, Any]], strict: bool,
              limit: FailureLimit, allow_empty_split: bool, partial: Path | str) -> None:
    """Raise :class:`InputsFailed` (nothing is published) when the inputs failed more than the build accepts: any
    with ``strict``, all of them, more than ``limit``, or all inputs of a split (unless ``allow_empty_split``)."""
    kept = f"nothing was published; finished parts are kept in {partial} for the next run"
    if strict and failures:
        shown = "\n  ".join(f"{f['source_id']}: {f['reason']}" for f in failures[:10])
        raise InputsFailed(f"--strict: {len(failures)} input(s) could not be converted:\n  {shown}\n({kept})")
    if not any(r["rows"] for r in results):
        raise InputsFailed(f"nothing was converted: all {planned.inputs} inputs failed:{_listed(failures)}\n({kept})")
    if limit.exceeded(failures, planned.inputs):
        if limit.count is None and limit.percent is None:
            params = [f for f in failures if f.get("stage") == "params"]
            raise InputsFailed(f"{len(params)} of {planned.inputs} inputs failed because of the parameters:"
                               f"{_listed(params)}\n(fix the parameters, or pass --max-failures N or P% to accept "
                               f"such failures; {kept})")
        raise InputsFailed(f"{len(failures)} of {planned.inputs} inputs failed, more than {limit} accepts:"
                           f"{_listed(failures)}\n({kept})")
    written = {row["split"] for r in results for row in r["rows"]}
    empty = [s for s in planned.splits if s not in written and any(t.split == s for t in planned.tasks)]
    if empty and not allow_empty_split:
        ids = {r.source_id for t in planned.tasks if t.split in empty for r, _ in t.records}
        raise InputsFailed(f"split {', '.join(empty)} came out empty: all its inputs failed:"
                           f"{_listed([f for f in failures if f['source_id'] in ids])}\n(pass --allow-empty-split "
                           f"to publish it anyway; {kept})")


def _listed(failures: list[dict[str, Any]]) -> str:
    """The top failure reasons, one per indented line."""
    return "".join(f"\n  {line}" for line in top_failures(failures))


def _looks_like_hint(tree: SourceTree, conv: Converter) -> str:
    """When ``conv``'s marker is nowhere in ``tree``: the datasets whose markers are, as a hint to the user."""
    if tree.locate(conv.marker) is not None:
        return ""
    others = looks_like(tree, conv.name)
    if not others:
        return ""
    more = f" (or {', '.join(others[1:])})" if others[1:] else ""
    return f"; this looks like {others[0]}{more}: pass --dataset {others[0]}"


def _source(src: str | os.PathLike, tree: SourceTree, root: str, conv: Converter) -> str:
    """Where the build read its inputs, as a ``--src`` that rebuilds it: the archive (or folder of archives) given;
    ``--src`` itself for a converter whose options are relative to it; else the dataset's own folder (what recorded
    paths are relative to), the same wherever at or above it ``--src`` pointed."""
    path = Path(src).resolve()
    return str(path if isinstance(tree, ArchiveTree) or conv.src_relative else path / root)


def _run(todo: list[Task], src: str, root: str, partial: Path | str, p: BuildParams, workers: int,
         scheduler: str | None, emit: OnEvent, storage_options: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Run ``todo`` in this process (workers <= 1, no scheduler) or on a dask cluster; results by task name, each
    announced with a :class:`TaskDone` as it completes (and, in this process, each input with an
    :class:`InputDone`)."""
    sizes = {t.name: len(t.records) for t in todo}
    results: dict[str, dict[str, Any]] = {}

    def finished(res: dict[str, Any]) -> None:
        results[res["task"]] = res
        emit(TaskDone(res["task"], sizes[res["task"]], len(res["rows"]), len(res["failures"])))

    kwargs = {"src": src, "partial": str(partial), "p": p, "root": root, "storage_options": storage_options}
    if workers <= 1 and scheduler is None:
        for t in todo:
            finished(run_task(t, **kwargs, on_input=lambda n, failed, name=t.name: emit(InputDone(name, n, failed))))
    elif todo:
        with DaskRunner(workers, scheduler, env=WORKER_ENV) as runner:
            try:
                for res in runner.map(run_task, todo, **kwargs):
                    finished(res)
            except WorkerLost as e:
                task: Task = e.item
                ids = [r.source_id for r, _ in task.records]
                shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if ids[10:] else "")
                raise BuildError(
                    f"a dask worker died {e.deaths} times converting shard {task.name} (inputs {shown}): one of "
                    f"these inputs kills the process that reads it (out of memory, or a crash in a decoder); give "
                    f"the workers more memory, lower --max-pixels, or move the input away; finished shards are "
                    f"kept in {partial} for the next run") from None
    return results


__all__ = ["build"]
