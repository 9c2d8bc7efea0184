"""The build driver: a short sequence of named steps, each in the module that holds its rules.

``build``: lock the dataset (``lock.py``: one build at a time, an OS lock beside it naming its holder; an object
store has none) -> plan (``plan.py``) -> up-to-date check (a rerun with the same plan and unchanged inputs,
``inputs.py``, returns the finished build) -> resume (the tasks an interrupted run finished) -> run the other tasks
(``task.py``, in this process or on dask) -> acceptance (``acceptance.py``: ``--strict``, ``--max-failures``, empty
splits) -> staging and publish (``staging.py``: the working folder, the states a build goes through and how it is
swapped in; ``publish.py``: the published files). A killed build resumes and produces the same bytes; a reader sees
no build, the previous one or the new one, never a partial one.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from medprep import __version__
from medprep.manifests import BuiltDataset, dumps, sha256_bytes
from medprep.manifests.fsio import configure, is_remote, join, local_path
from medprep.manifests.runner import WORKER_ENV, DaskRunner, WorkerLost

from .acceptance import Acceptance
from .archive import ArchiveTree, open_tree
from .datasets import Converter, looks_like
from .events import BuildResult, InputDone, OnEvent, Planned, Published, TaskDone
from .inputs import STAMPS, contents_sha256, digest, stamps_record, unchanged
from .lock import DatasetLock
from .params import BuildError, BuildParams, FailureLimit
from .plan import Plan, Task, plan
from .publish import publish
from .staging import LocalStaging, Staging, StoreStaging
from .task import TaskResult, run_task
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
    p = _params(params, fields)
    accept = Acceptance(strict, FailureLimit.parse(max_failures), allow_empty_split)
    if keep_generations < 1:
        raise ValueError(f"--keep-generations {keep_generations}: expected 1 or more (the new build is one of them)")
    emit: OnEvent = on_event or (lambda event: None)
    t0 = time.perf_counter()
    conv = p.converter()
    stage = _staging(out, conv.name, storage_options, keep_generations)
    src = local_path(src, "--src", SRC_URL)
    tree = open_tree(src)
    split_sha = sha256_bytes(Path(p.split_file).read_bytes()) if p.split_file else None
    with DatasetLock(stage.out, command, wait) if isinstance(stage, LocalStaging) else nullcontext():
        planned, plan_sha = _plan(conv, tree, p, split_sha)
        accept.check_plan(planned)
        old = _up_to_date(stage, planned, plan_sha, tree, overwrite)
        if old is not None:
            return BuildResult(stage.out, old.manifest, old.failures(), reused=True)
        stage.open(plan_sha, digest(planned.stamps))
        done = stage.resume(planned)
        emit(Planned(conv.name, sum(len(t.records) for t in planned.tasks), len(planned.tasks),
                     sum(len(t.records) for t in planned.tasks if t.name in done)))
        todo = [t for t in planned.tasks if t.name not in done]
        finished = {**done, **_run(todo, str(tree.root), planned.root, stage.partial, p, workers, scheduler, emit,
                                   storage_options)}
        results = [finished[t.name] for t in planned.tasks]
        failures = _failures(planned, results)
        accept.check_results(planned, results, failures, stage.partial)
        origin = _origin(command, src, tree, planned, conv)
        manifest = stage.publish(lambda target, folder: publish(
            target, stage.partial, planned, results, failures, p, conv, split_sha, plan_sha, origin,
            contents_sha256(results), folder))
        emit(Published(stage.out))
    return BuildResult(stage.out, manifest, failures, time.perf_counter() - t0, skipped_tasks=len(done),
                       resumed_samples=sum(len(r.rows) for r in done.values()))


def _params(params: BuildParams | str, fields: dict[str, Any]) -> BuildParams:
    """The build's parameters: ``params``, or the dataset named so with ``fields`` as its fields and options."""
    if not isinstance(params, BuildParams):
        return BuildParams.of(params, **fields)
    if fields:
        raise TypeError(f"build() got a BuildParams and the keywords {sorted(fields)}: pass one or the other")
    return params


def _staging(out: str | os.PathLike, name: str, storage_options: dict[str, Any] | None,
             keep_generations: int) -> Staging:
    """The staging of the dataset ``name`` under the parent ``out`` (a folder, or an object-store URL whose file
    system ``storage_options`` configure)."""
    if is_remote(out):
        configure(out, storage_options)
        return StoreStaging(join(out, name), keep_generations)
    return LocalStaging(local_path(out, "--out", "") / name)  # no URL comes here: is_remote took them all


def _plan(conv: Converter, tree: SourceTree, p: BuildParams, split_sha: str | None) -> tuple[Plan, str]:
    """The plan and its digest (what it converts and how, with the split file's digest and medprep's version)."""
    try:
        planned = plan(conv, tree, p)
    except LayoutError as e:
        raise LayoutError(f"{e}{_looks_like_hint(tree, conv)}") from None
    return planned, sha256_bytes(dumps(planned.doc(p.recorded(split_sha), __version__)))


def _up_to_date(stage: Staging, planned: Plan, plan_sha: str, tree: SourceTree, overwrite: bool
                ) -> BuiltDataset | None:
    """The build at ``stage.out`` when it is of this plan with unchanged inputs (kept as it is), else None; a build
    with other parameters or inputs there is a :class:`BuildError` unless ``overwrite``."""
    old = stage.published()
    if old is None:
        return None
    same_plan = old.manifest.params.get("plan_sha256") == plan_sha
    if same_plan and unchanged(old, planned, tree):
        log.info("%s is up to date", stage.out)
        stage.keep(old)
        return old
    if not same_plan and not overwrite:
        raise BuildError(f"{stage.out} already holds a build of {old.name} with other parameters or inputs; "
                         f"pass --overwrite to replace it or choose another --out")
    return None


def _failures(planned: Plan, results: list[TaskResult]) -> list[dict[str, Any]]:
    """The failures.jsonl rows: the inputs planning refused and those the tasks could not convert, by source id."""
    failures = [{**f.row(), "files": [x[len(planned.root):] for x in f.files]} for f in planned.failures]
    failures += [f for r in results for f in r.failures]
    failures.sort(key=lambda f: natural_key(f["source_id"]))
    return failures


def _origin(command: Sequence[str] | None, src: str | os.PathLike, tree: SourceTree, planned: Plan,
            conv: Converter) -> dict[str, Any]:
    """What the card records of where the build came from: the command line, the source and its inputs' stamps
    (paths and arguments that are not UTF-8 with those bytes escaped, as JSON needs)."""
    return {"command": [escaped(a) for a in command] if command else None,
            "source": escaped(_source(src, tree, planned.root, conv)), STAMPS: stamps_record(planned)}


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
         scheduler: str | None, emit: OnEvent, storage_options: dict[str, Any] | None) -> dict[str, TaskResult]:
    """Run ``todo`` in this process (workers <= 1, no scheduler) or on a dask cluster; results by task name, each
    announced with a :class:`TaskDone` as it completes (and, in this process, each input with an
    :class:`InputDone`)."""
    sizes = {t.name: len(t.records) for t in todo}
    results: dict[str, TaskResult] = {}

    def finished(res: TaskResult) -> None:
        results[res.task] = res
        emit(TaskDone(res.task, sizes[res.task], len(res.rows), len(res.failures)))

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
