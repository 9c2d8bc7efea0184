"""The build driver: plan (``plan.py``) -> run the tasks (``task.py``, in process or on dask) -> publish.

Every task writes its shard(s) under temporary names in ``.<name>.partial/`` beside the dataset folder and records
its result there last, so a killed build resumes by skipping finished tasks and produces the same bytes. When all
tasks are done, ``publish.py`` assembles the final folder and swaps it in: a reader sees no build, the previous one
or the new one, never a partial one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from medprep import __version__
from medprep.manifests import FAILURES, MANIFEST, Manifest, atomic_write, dumps, sha256_bytes
from medprep.manifests.runner import WORKER_ENV, DaskRunner

from .archive import open_source
from .events import BuildResult, OnEvent, Planned, Published, TaskDone
from .params import BuildError, BuildParams
from .plan import Task, plan
from .publish import publish, staging_dir, swap_in
from .task import load_done, run_task
from .tree import natural_key

log = logging.getLogger("medprep.build")


def build(
    params: BuildParams | str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    strict: bool = False,
    overwrite: bool = False,
    on_event: OnEvent | None = None,
    command: Sequence[str] | None = None,
    **fields: Any,
) -> BuildResult:
    """Build a dataset from its official layout under ``src`` into ``out/<dataset>/`` (``out`` is the parent
    folder, as the CLI's ``--out``; the folder is named after the dataset, or its ``name`` option).

    ``params``: the :class:`BuildParams`, or a dataset name with the fields and converter options as keywords
    (``build("drive", src, out, size=256)`` builds ``BuildParams.of("drive", size=256)``). ``workers`` > 1 or a
    dask ``scheduler`` address run the tasks on dask; ``strict`` publishes nothing if any input fails;
    ``on_event`` receives :class:`Planned`, :class:`TaskDone` and :class:`Published` events; ``command`` (the CLI
    passes ``sys.argv``) is recorded with the dataset's folder in the card beside the manifest. Reruns with the same
    parameters resume an interrupted build or return the finished one unchanged; a finished build with other
    parameters is replaced only with ``overwrite=True``.
    """
    if isinstance(params, BuildParams):
        if fields:
            raise TypeError(f"build() got a BuildParams and the keywords {sorted(fields)}: pass one or the other")
        p = params
    else:
        p = BuildParams.of(params, **fields)
    emit: OnEvent = on_event or (lambda event: None)
    t0 = time.perf_counter()
    conv = p.converter()
    out = Path(out) / conv.name
    tree = open_source(src)
    split_sha = sha256_bytes(Path(p.split_file).read_bytes()) if p.split_file else None
    planned = plan(conv, tree, p)
    plan_sha = sha256_bytes(dumps(planned.doc(p.recorded(split_sha), __version__)))

    existing = out / MANIFEST
    if existing.exists():
        old = json.loads(existing.read_text())
        if old.get("params", {}).get("plan_sha256") == plan_sha:
            log.info("%s is up to date", out)
            return BuildResult(out, Manifest.from_json(old), [json.loads(x) for x in
                               (out / FAILURES).read_text().splitlines() if x.strip()], reused=True)
        if not overwrite:
            raise BuildError(f"{out} already holds a build of {old.get('dataset')} with other parameters or inputs; "
                             f"pass --overwrite to replace it or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise BuildError(f"{out} exists and is not a medprep build (no {MANIFEST}); choose an empty or new --out")

    partial = staging_dir(out)
    stamp = partial / "plan.sha256"
    if partial.exists() and (not stamp.exists() or stamp.read_text() != plan_sha):
        shutil.rmtree(partial)  # leftovers of an interrupted build with other parameters
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write(stamp, plan_sha.encode())

    done = {t.name: r for t in planned.tasks if (r := load_done(partial, t)) is not None}
    todo = [t for t in planned.tasks if t.name not in done]
    emit(Planned(conv.name, sum(len(t.records) for t in planned.tasks), len(planned.tasks),
                 sum(len(t.records) for t in planned.tasks if t.name in done)))
    done.update(_run(todo, str(tree.root), planned.root, partial, p, workers, scheduler, emit))
    results = [done[t.name] for t in planned.tasks]

    failures = [{**f.row(), "files": [x[len(planned.root):] for x in f.files]} for f in planned.failures]
    failures += [f for r in results for f in r["failures"]]
    failures.sort(key=lambda f: natural_key(f["source_id"]))
    if strict and failures:
        shown = "\n  ".join(f"{f['source_id']}: {f['reason']}" for f in failures[:10])
        raise BuildError(f"--strict: {len(failures)} input(s) could not be converted:\n  {shown}\n"
                         f"(nothing was published; partial results kept in {partial})")
    staged = partial / "publish"
    if staged.exists():
        shutil.rmtree(staged)  # an earlier publish was interrupted: redo it from the kept parts
    staged.mkdir()
    # the dataset's own folder (what recorded paths are relative to), wherever at or above it --src pointed
    origin = {"command": list(command) if command else None, "source": str(Path(src).resolve() / planned.root)}
    manifest = publish(staged, partial, planned, results, failures, p, conv, split_sha, plan_sha, origin)
    swap_in(staged, out, partial)
    shutil.rmtree(partial)
    emit(Published(out))
    return BuildResult(out, manifest, failures, time.perf_counter() - t0, skipped_tasks=len(planned.tasks) - len(todo))


def _run(todo: list[Task], src: str, root: str, partial: Path, p: BuildParams, workers: int, scheduler: str | None,
         emit: OnEvent) -> dict[str, dict[str, Any]]:
    """Run ``todo`` in this process (workers <= 1, no scheduler) or on a dask cluster; results by task name, each
    announced with a :class:`TaskDone` as it completes."""
    sizes = {t.name: len(t.records) for t in todo}
    results: dict[str, dict[str, Any]] = {}

    def finished(res: dict[str, Any]) -> None:
        results[res["task"]] = res
        emit(TaskDone(res["task"], sizes[res["task"]], len(res["rows"]), len(res["failures"])))

    kwargs = {"src": src, "partial": str(partial), "p": p, "root": root}
    if workers <= 1 and scheduler is None:
        for t in todo:
            finished(run_task(t, **kwargs))
    elif todo:
        with DaskRunner(workers, scheduler, env=WORKER_ENV) as runner:
            for res in runner.map(run_task, todo, **kwargs):
                finished(res)
    return results


__all__ = ["build"]
