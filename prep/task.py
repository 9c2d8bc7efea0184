"""Running one planned shard (a task) in any process: convert its records, write its tar part(s), record the result.

A task writes ``<partial>/<task>.partNN.tar`` and, last, ``<partial>/<task>.json`` (its :class:`TaskResult`); a build
that finds that record, all its parts intact and its input files unchanged (:func:`load_done`) skips the task when
it resumes (``staging.py`` holds the whole protocol). ``partial`` may be an object-store URL (a build published
there): a part is then written to a local temporary file and uploaded whole when it is complete, so the store holds
finished parts only.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from medprep.manifests import atomic_write, dumps, fs_and_path, join, jsonl_bytes, sha256_bytes
from medprep.manifests.pixels import make_key
from medprep.manifests.fsio import configure, is_remote
from medprep.manifests.tar import OversizedSample, ShardWriter, TarPart

from .archive import open_tree
from .datasets import Converter, Failure, Record
from .imaging import ConversionError, pixel_limit
from .params import BuildParams
from .plan import Task
from .sample import convert
from .tree import InputRefused, SourceTree

Stamp = tuple[int, int] | None  # (size, mtime ns) of an input file, None if it could not be read


@dataclass(frozen=True)
class TaskResult:
    """What one task produced: returned to the driver (pickled across dask processes) and kept, as canonical JSON
    (:meth:`to_json`, one line: the same fields), in ``<partial>/<task>.json`` for a resumed build."""

    task: str  # the task's name, ``<split>-NNNNNN``
    parts: tuple[TarPart, ...]  # its finished parts, in order
    rows: tuple[dict[str, Any], ...]  # samples.jsonl rows, each with the number of its ``part``
    failures: tuple[dict[str, Any], ...]  # failures.jsonl rows of its inputs
    converted: int  # inputs that gave at least one sample
    stamps: dict[str, Stamp]  # per file read (by recorded path): its stamp, taken before reading it
    inputs: dict[str, str | None]  # per file read: sha256, None if it could not be read

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "parts": [pt.to_json() for pt in self.parts], "rows": list(self.rows),
                "failures": list(self.failures), "converted": self.converted, "stamps": self.stamps,
                "inputs": self.inputs}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TaskResult:
        return cls(doc["task"], tuple(TarPart.from_json(pt) for pt in doc["parts"]), tuple(doc["rows"]),
                   tuple(doc["failures"]), doc["converted"],
                   {rel: None if s is None else (s[0], s[1]) for rel, s in doc["stamps"].items()}, doc["inputs"])


def run_task(task: Task, src: str, partial: str, p: BuildParams, root: str = "",
             on_input: Callable[[int, bool], None] | None = None,
             storage_options: dict[str, Any] | None = None) -> TaskResult:
    """Convert one planned shard: read each record's files (stamped before reading, hashed), convert them into
    samples and write those into ``<partial>/<task>.partNN.tar`` (the next part when a sample would take one over
    ``--shard-bytes``); an input that gives no sample is a failure with its reason. Last, record the
    :class:`TaskResult` in ``<partial>/<task>.json``, and return it.

    Runs in any process (dask worker or the caller); everything it needs comes in its arguments (paths are recorded
    relative to ``root``). ``on_input(samples, failed)``, when given, is called as each input is done (the caller's
    progress). ``storage_options`` configure the file system of a ``partial`` URL in this process (see
    ``fsio.configure``).
    """
    configure(partial, storage_options)
    conv, tree = p.converter(), open_tree(src, reuse=True)  # a process's tasks share its listed, mounted archives
    notify = on_input or (lambda samples, failed: None)
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    stamps: dict[str, Stamp] = {}
    inputs: dict[str, str | None] = {}
    converted = 0
    with (_part_folder(partial) as (folder, post), pixel_limit(p.max_pixels),
          ShardWriter(folder, task.name, p.shard_bytes, post=post) as writer):
        for rec, key in task.records:
            produced = 0
            try:
                blobs = _read(tree, rec.files(), root, stamps, inputs)
                for sample, row in _samples(conv, rec, key, blobs, inputs, task.split, p, root):
                    rows.append({**row, "part": _write(writer, sample)})
                    produced += 1
                if not produced:
                    raise ValueError("yields no sample (no slice with foreground)")
            except Exception as e:  # every input ends up converted or listed with its reason
                failures.append(Failure(rec.source_id, tuple(rec.relative_to(root).files()), _reason(e),
                                        stage="params" if isinstance(e, SampleTooLarge) else "convert").row())
                notify(0, True)
                continue
            converted += 1
            notify(produced, False)
    result = TaskResult(task.name, tuple(writer.parts), tuple(rows), tuple(failures), converted, stamps, inputs)
    atomic_write(join(partial, f"{task.name}.json"), jsonl_bytes([result.to_json()]))  # compact: C encoder
    return result


@contextmanager
def _part_folder(partial: str) -> Iterator[tuple[Path, Callable[[Path], None] | None]]:
    """Where a task writes its parts, and what is done with each finished one: ``partial`` itself; for an
    object-store URL a temporary folder of this process, each finished part uploaded whole to ``partial`` (an
    object appears when its upload is complete) and removed."""
    if not is_remote(partial):
        yield Path(partial), None
        return

    def upload(part: Path) -> None:
        fs, path = fs_and_path(join(partial, part.name))
        fs.put_file(str(part), path)
        part.unlink()

    with tempfile.TemporaryDirectory(prefix="medprep-task-") as scratch:
        yield Path(scratch), upload


def _read(tree: SourceTree, files: list[str], root: str, stamps: dict[str, Stamp],
          inputs: dict[str, str | None]) -> dict[str, bytes]:
    """The bytes of ``files``, each stamped as it is opened and hashed into ``stamps`` and ``inputs`` (by recorded
    path, relative to ``root``). A file that cannot be read raises, after it and the files after it are stamped
    with a sha256 of None."""
    blobs = {}
    for i, f in enumerate(files):
        try:
            blobs[f], stamps[f[len(root):]] = tree.read_stamped(f)
        except Exception:
            for g in files[i:]:
                stamps[g[len(root):]], inputs[g[len(root):]] = tree.stamp(g), None
            raise
        inputs[f[len(root):]] = sha256_bytes(blobs[f])
    return blobs


def _samples(conv: Converter, rec: Record, key: str, blobs: dict[str, bytes], inputs: dict[str, str | None],
             split: str, p: BuildParams, root: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The (webdataset sample, samples.jsonl row) pairs of one record, converted one by one as they are written."""
    shown = rec.relative_to(root)
    hashes = {f[len(root):]: inputs[f[len(root):]] for f in blobs}
    mid = p.modality_id
    for sid, loaded in conv.samples(blobs, rec):
        skey = key if sid == rec.source_id else make_key(conv.name, sid)
        sample_mid = mid if mid is not None else p.sample_modality_id(conv, sid, rec.modality)
        sample, row = convert(conv, shown, loaded, hashes, skey, sid, split, sample_mid, p)
        if mid is None:  # a per-sample id or modality: the manifest's are the most common ones
            row["modality_id"] = sample_mid
            if rec.modality is not None:
                row["modality"] = rec.modality
        yield sample, row


def _write(writer: ShardWriter, sample: dict[str, Any]) -> int:
    """Write ``sample``; the number of its part. One that no part can hold is a :class:`SampleTooLarge`."""
    try:
        return writer.write(sample)
    except OversizedSample as e:
        raise SampleTooLarge(f"sample {e.key} takes {e.nbytes} bytes in a tar, more than --shard-bytes {e.limit}; "
                             f"raise --shard-bytes") from None


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


def load_done(partial: str | Path, task: Task, stamps: Mapping[str, Stamp]) -> TaskResult | None:
    """A finished task's result, if its record and all its part files (of the recorded sizes) are there and the
    files it read still have the ``stamps`` (the plan's, by recorded path) they had when it ran. ``partial`` is a
    folder or URL."""
    fs, base = fs_and_path(partial)
    try:
        res = TaskResult.from_json(json.loads(fs.cat_file(f"{base}/{task.name}.json")))
    except FileNotFoundError:
        return None
    if dumps(res.stamps) != dumps({rel: stamps.get(rel) for rel in res.stamps}):
        return None
    try:
        intact = all(fs.size(f"{base}/{pt.file}") == pt.bytes for pt in res.parts)
    except FileNotFoundError:
        return None
    return res if intact else None


__all__ = ["TaskResult", "load_done", "run_task"]
