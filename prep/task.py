"""Running one planned shard (a task) in any process: convert its records, write its tar part(s), record the result.

A task writes ``<partial>/<task>.partNN.tar`` and, last, ``<partial>/<task>.json``; a build that finds that record,
all its parts intact and its input files unchanged (:func:`load_done`) skips the task when it resumes. ``partial``
may be an object-store URL (a build published there): a part is then written to a local temporary file and uploaded
whole when it is complete, so the store holds finished parts only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from medprep.manifests import atomic_write, dumps, fs_and_path, join, jsonl_bytes, sha256_bytes
from medprep.manifests.fsio import configure, is_remote
from medprep.manifests.pixels import make_key
from medprep.manifests.tar import TarShard

from .archive import open_tree
from .datasets import Failure
from .imaging import ConversionError, pixel_limit
from .params import BuildParams
from .plan import Task
from .sample import convert
from .tree import InputRefused


def run_task(task: Task, src: str, partial: str, p: BuildParams, root: str = "",
             on_input: Callable[[int, bool], None] | None = None,
             storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert one planned shard; writes ``<partial>/<task>.partNN.tar`` and, last, ``<partial>/<task>.json``.

    Runs in any process (dask worker or the caller); everything it needs comes in its arguments. Returns the
    result record: ``task``, ``parts`` (file, nsamples, bytes, sha256), ``rows`` (samples.jsonl rows with their
    part), ``failures``, ``converted`` (inputs that gave at least one sample), and per file read (by recorded path)
    its ``stamps`` (size, mtime ns; taken before reading) and ``inputs`` (sha256, None if it could not be read).
    ``on_input(samples, failed)``, when given, is called as each input is done (the caller's progress).
    ``storage_options`` configure the file system of a ``partial`` URL in this process (see ``store.configure``).
    """
    configure(partial, storage_options)
    if not is_remote(partial):
        return _run(task, src, partial, p, root, on_input, None)
    with tempfile.TemporaryDirectory(prefix="medprep-task-") as scratch:  # the worker's own temporary folder
        return _run(task, src, partial, p, root, on_input, Path(scratch))


def _run(task: Task, src: str, partial: str, p: BuildParams, root: str,
         on_input: Callable[[int, bool], None] | None, scratch: Path | None) -> dict[str, Any]:
    """:func:`run_task`, its parts written to ``scratch`` and uploaded to ``partial`` (when given) or written in
    ``partial``."""
    conv = p.converter()
    tree = open_tree(src, reuse=True)  # the tasks a process runs share the listed, mounted archives
    mid = p.modality_id
    parts: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    converted = 0
    stamps: dict[str, tuple[int, int] | None] = {}
    inputs: dict[str, str | None] = {}
    state: dict[str, Any] = {"w": None, "n": 0, "path": None}

    def close_part() -> None:
        if state["w"] is None:
            return
        nbytes, digest = state["w"].close()
        name = Path(state["path"]).name
        if scratch is not None:
            fs, path = fs_and_path(join(partial, name))
            fs.put_file(state["path"], path)  # an object appears when its upload is complete
            os.unlink(state["path"])
        parts.append({"file": name, "nsamples": state["n"], "bytes": nbytes, "sha256": digest})
        state.update(w=None, n=0)

    with pixel_limit(p.max_pixels):  # every decode of this task refuses images over --max-pixels
        for rec, key in task.records:
            produced = 0
            files = rec.files()
            try:
                blobs = {}
                for i, f in enumerate(files):  # stamped as it is opened; its sha256 is None if it cannot be read
                    try:
                        blobs[f], stamps[f[len(root):]] = tree.read_stamped(f)
                    except Exception:
                        for g in files[i:]:
                            stamps[g[len(root):]], inputs[g[len(root):]] = tree.stamp(g), None
                        raise
                    inputs[f[len(root):]] = sha256_bytes(blobs[f])
                shown = rec.relative_to(root)
                hashes = {f[len(root):]: inputs[f[len(root):]] for f in blobs}
                for sid, loaded in conv.samples(blobs, rec):
                    skey = key if sid == rec.source_id else make_key(conv.name, sid)
                    sample_mid = mid if mid is not None else p.sample_modality_id(conv, sid, rec.modality)
                    sample, row = convert(conv, shown, loaded, hashes, skey, sid, task.split, sample_mid, p)
                    if mid is None:  # a per-sample id or modality: the manifest's are the most common ones
                        row["modality_id"] = sample_mid
                        if rec.modality is not None:
                            row["modality"] = rec.modality
                    size = TarShard.member_bytes(sample)
                    if TarShard.file_size(size) > p.shard_bytes:
                        raise SampleTooLarge(f"sample {skey} takes {TarShard.file_size(size)} bytes in a tar, more "
                                             f"than --shard-bytes {p.shard_bytes}; raise --shard-bytes")
                    if state["w"] is not None and TarShard.file_size(state["bytes"] + size) > p.shard_bytes:
                        close_part()
                    if state["w"] is None:
                        state["path"] = str(Path(scratch or partial) / f"{task.name}.part{len(parts):02d}.tar")
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
                                        stage="params" if isinstance(e, SampleTooLarge) else "convert").row())
                if on_input is not None:
                    on_input(0, True)
                continue
            converted += 1
            if on_input is not None:
                on_input(produced, False)
    close_part()
    result = {"task": task.name, "parts": parts, "rows": rows, "failures": failures, "converted": converted,
              "stamps": stamps, "inputs": inputs}
    atomic_write(join(partial, f"{task.name}.json"), jsonl_bytes([result]))  # compact: C encoder, not indent=1
    return result


class SampleTooLarge(ConversionError):
    """A sample that does not fit in a shard: the parameters (``--shard-bytes``) are wrong, not the input."""


def _reason(e: Exception) -> str:
    """The failure reason: a ``ConversionError``'s message, else the exception's (qualified) type and message."""
    if isinstance(e, (ConversionError, InputRefused)):
        return str(e).strip()
    module = type(e).__module__
    kind = type(e).__qualname__
    if module != "builtins" and not module.startswith("medprep."):
        kind = f"{module}.{kind}"  # e.g. cv2.error, not just 'error'
    return f"{kind}: {' '.join(str(e).split())}"


def load_done(partial: str | Path, task: Task, stamps: dict[str, Any]) -> dict[str, Any] | None:
    """A finished task's result, if its record and all its part files (of the recorded sizes) are there and the
    files it read still have the ``stamps`` (the plan's, by recorded path) they had when it ran. ``partial`` is a
    folder or URL."""
    fs, base = fs_and_path(partial)
    try:
        res = json.loads(fs.cat_file(f"{base}/{task.name}.json"))
    except FileNotFoundError:
        return None
    if dumps(res.get("stamps")) != dumps({rel: stamps.get(rel) for rel in res.get("stamps") or {}}):
        return None
    try:
        intact = all(fs.size(f"{base}/{pt['file']}") == pt["bytes"] for pt in res["parts"])
    except FileNotFoundError:
        return None
    return res if intact else None


__all__ = ["load_done", "run_task"]
