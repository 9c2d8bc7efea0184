"""Running one planned shard (a task) in any process: convert its records, write its tar part(s), record the result.

A task writes ``<partial>/<task>.partNN.tar`` and, last, ``<partial>/<task>.json``; a build that finds that record
and all its parts intact (:func:`load_done`) skips the task when it resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medprep.manifests import atomic_write, dumps, sha256_bytes
from medprep.manifests.pixels import make_key
from medprep.manifests.tar import TarShard

from .archive import open_source
from .datasets import Failure
from .imaging import ConversionError
from .params import BuildParams
from .plan import Task
from .sample import convert


def run_task(task: Task, src: str, partial: str, p: BuildParams, root: str = "") -> dict[str, Any]:
    """Convert one planned shard; writes ``<partial>/<task>.partNN.tar`` and, last, ``<partial>/<task>.json``.

    Runs in any process (dask worker or the caller); everything it needs comes in its arguments. Returns the
    result record: ``task``, ``parts`` (file, nsamples, bytes, sha256), ``rows`` (samples.jsonl rows with their
    part), ``failures`` and ``converted`` (inputs that gave at least one sample).
    """
    conv = p.converter()
    tree = open_source(src, reuse=True)  # the tasks a process runs share the listed, mounted archives
    mid = p.modality_id
    parts: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    converted = 0
    state: dict[str, Any] = {"w": None, "n": 0, "path": None}

    def close_part() -> None:
        if state["w"] is None:
            return
        nbytes, digest = state["w"].close()
        parts.append({"file": Path(state["path"]).name, "nsamples": state["n"], "bytes": nbytes, "sha256": digest})
        state.update(w=None, n=0)

    for rec, key in task.records:
        produced = 0
        try:
            blobs = {f: tree.read(f) for f in rec.files()}
            shown = rec.relative_to(root)
            hashes = {f[len(root):]: sha256_bytes(b) for f, b in blobs.items()}
            for sid, loaded in conv.samples(blobs, rec):
                skey = key if sid == rec.source_id else make_key(conv.name, sid)
                sample_mid = mid if mid is not None else p.sample_modality_id(conv, sid)
                sample, row = convert(conv, shown, loaded, hashes, skey, sid, task.split, sample_mid, p)
                if mid is None:  # a per-sample id map: the manifest's id is the most common one
                    row["modality_id"] = sample_mid
                size = TarShard.member_bytes(sample)
                if TarShard.file_size(size) > p.shard_size:
                    raise ConversionError(f"sample {skey} takes {TarShard.file_size(size)} bytes in a tar, more than "
                                          f"--shard-size {p.shard_size}; raise --shard-size")
                if state["w"] is not None and TarShard.file_size(state["bytes"] + size) > p.shard_size:
                    close_part()
                if state["w"] is None:
                    state["path"] = str(Path(partial) / f"{task.name}.part{len(parts):02d}.tar")
                    state["w"] = TarShard(Path(state["path"]))
                    state["bytes"] = 0
                state["w"].write(sample)
                state["n"] += 1
                state["bytes"] += size
                rows.append({**row, "part": len(parts)})
                produced += 1
            if not produced:
                raise ValueError("yields no sample (no slice with foreground)")
        except Exception as e:  # every input ends up converted or listed with its reason
            failures.append(Failure(rec.source_id, tuple(rec.relative_to(root).files()), _reason(e),
                                    stage="convert").row())
            continue
        converted += 1
    close_part()
    result = {"task": task.name, "parts": parts, "rows": rows, "failures": failures, "converted": converted}
    atomic_write(Path(partial) / f"{task.name}.json", dumps(result))
    return result


def _reason(e: Exception) -> str:
    return str(e) if type(e).__name__ == "ConversionError" else f"{type(e).__name__}: {e}"


def load_done(partial: Path, task: Task) -> dict[str, Any] | None:
    """A finished task's result, if its record and all its part files are intact."""
    rec = partial / f"{task.name}.json"
    if not rec.exists():
        return None
    res = json.loads(rec.read_text())
    return res if all((partial / pt["file"]).exists() for pt in res["parts"]) else None


__all__ = ["load_done", "run_task"]
