"""The build: discover -> split -> plan shards -> convert in tasks (one per planned shard) -> publish.

Every task writes its shard(s) under temporary names in ``.<out name>.partial/`` beside ``out`` and records its
result there last, so a killed build resumes by skipping finished tasks and produces the same bytes. When all
tasks are done, the shards get their final names in plan order inside a staging folder, followed by samples.jsonl,
failures.jsonl, the wids indexes and manifest.json, and the staging folder is renamed to ``out``: a reader sees
no build, the previous one or the new one, never a partial one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from medprep import __version__
from medprep.manifests import (
    FAILURES, MANIFEST, SAMPLES, SPLITS, Manifest, ShardEntry, atomic_write, dumps, jsonl_bytes, sha256_bytes,
    wids_index,
)

from . import splits as splitting
from .datasets import Converter, Failure, Record, get_converter, modality_id
from .imaging import PNG_CODEC, ConversionError
from .sample import SampleParams, convert, make_key, worst_case_bytes
from .tree import LayoutError, SourceTree, natural_key, open_source

log = logging.getLogger("medprep.build")

PARTIAL = ".partial"
TAR_MTIME = 0  # fixed tar member mtime (1970-01-01) for byte-identical rebuilds


class BuildError(RuntimeError):
    """A build that cannot proceed (bad parameters, bad layout, --strict failure)."""


@dataclass(frozen=True)
class Task:
    """One planned output shard: which records go in it."""

    split: str
    index: int
    records: tuple[tuple[Record, str], ...]  # (record, key)

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


@dataclass
class BuildResult:
    """What a build produced (also printed as the summary)."""

    out: Path
    manifest: Manifest
    failures: list[dict[str, Any]]
    seconds: float = 0.0
    skipped_tasks: int = 0
    reused: bool = False

    def summary(self) -> str:
        c = self.manifest.counts
        per_split = ", ".join(f"{k} {v}" for k, v in c["splits"].items())
        made = (f"{c['samples']} samples written" if c["converted"] == c["samples"]
                else f"{c['converted']} converted ({c['samples']} samples)")
        lines = [
            f"{self.manifest.dataset}: {c['inputs']} inputs found = {made} + {c['failures']} failures"
            + ("" if c["inputs"] == c["converted"] + c["failures"] else "  (MISMATCH)"),
            f"  splits: {per_split or 'none'}; {len(self.manifest.shards)} shards in {self.out}",
        ]
        reasons: dict[str, int] = {}
        for f in self.failures:
            kind = f["reason"].split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        lines += [f"  failure: {n} x {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])[:8]]
        rep = self.manifest.split_report
        if rep.get("split_file"):
            lines.append(f"  split file: {rep['matched']} matched, {len(rep['in_file_not_found'])} listed but not "
                         f"found, {len(rep['found_not_in_file'])} found but not listed")
        if not self.reused and self.seconds:
            lines.append(f"  {self.seconds:.1f} s, {c['samples'] / self.seconds:.1f} samples/s"
                         + (f" ({self.skipped_tasks} shards resumed)" if self.skipped_tasks else ""))
        return "\n".join(lines)


@dataclass
class BuildParams:
    """All build parameters that the output depends on (recorded in the manifest)."""

    dataset: str
    size: int = 1024
    resize: str = "stretch"
    patch_sizes: tuple[int, ...] = (16, 32, 64)
    modality_map: str = "default"
    seed: int = 0
    split_rule: str | None = None
    split_file: str | None = None
    group_by: str | None = None
    shard_size: int = 1_000_000_000
    shard_samples: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def sample_params(self) -> SampleParams:
        return SampleParams(self.size, self.resize, tuple(self.patch_sizes), self.modality_map)

    def recorded(self, split_file_sha: str | None) -> dict[str, Any]:
        d = asdict(self)
        d["patch_sizes"] = list(self.patch_sizes)
        d["split_file"] = {"name": Path(self.split_file).name, "sha256": split_file_sha} if self.split_file else None
        d["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.options.items()}
        d["png_codec"] = PNG_CODEC
        return d


# ---------------------------------------------------------------------------------------------------- planning


def _assign_splits(conv: Converter, records: list[Record], p: BuildParams, failures: list[Failure]
                   ) -> tuple[dict[str, str], dict[str, Any]]:
    """source id -> split, and the split report; records left without a split are added to ``failures``."""
    rule = "file" if p.split_file else (p.split_rule or conv.split_rule)
    if rule not in splitting.SPLIT_RULES:
        raise BuildError(f"--split-rule {rule!r}: expected one of {', '.join(splitting.SPLIT_RULES[:3])}")
    ids = [r.source_id for r in records]
    report: dict[str, Any] = {"rule": rule, "seed": p.seed}
    if rule == "file":
        if p.split_file is None:
            raise BuildError("--split-rule file needs --split-file FILE")
        mapping, ignored = splitting.read_split_file(p.split_file)
        assigned, rep = splitting.apply_split_file({r.source_id: conv.split_file_id(r.source_id) for r in records},
                                                   mapping)
        report.update(rep, split_file=Path(p.split_file).name, ignored_keys={k: len(v) for k, v in ignored.items()})
        for r in records:
            if r.source_id not in assigned:
                failures.append(Failure(r.source_id, tuple(r.files()),
                                        f"not listed in --split-file {Path(p.split_file).name} "
                                        f"(looked up as {conv.split_file_id(r.source_id)!r})", stage="split"))
        return assigned, report
    if p.group_by:
        groups = {r.source_id: r.group for r in records}
        missing = [i for i, g in groups.items() if g is None]
        if missing:
            raise BuildError(f"--group-by {p.group_by}: no {p.group_by} known for {len(missing)} of {len(ids)} "
                             f"samples (e.g. {missing[:3]}); give a frame-to-{p.group_by} table")
        report["group_by"] = p.group_by
        return splitting.split_groups(groups, p.seed), report  # type: ignore[arg-type]
    if rule == "811":
        return splitting.split_811(ids, p.seed), report
    if rule == "test":
        return {i: "test" for i in ids}, report
    # official
    out = {r.source_id: r.split or "train" for r in records}
    if conv.valid_from_train and not any(s == "valid" for s in out.values()):
        carved = splitting.carve_valid([i for i, s in out.items() if s == "train"], conv.valid_from_train, p.seed)
        out.update({i: "valid" for i in carved})
        report["valid_from_train"] = conv.valid_from_train
    return out, report


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


def plan(conv: Converter, tree: SourceTree, p: BuildParams
         ) -> tuple[list[Task], list[Failure], dict[str, Any], int, str]:
    """Discover inputs, assign splits and cut each split into planned shards. Returns (tasks, failures so far,
    split report, number of inputs found, the folder prefix shared by all inputs)."""
    records, failures = conv.discover(tree)
    if not records and not failures:
        raise LayoutError(f"{conv.name}: found no input files under {tree.label}; expected {conv.layout}")
    inputs = len(records) + len(failures)
    keyed: dict[str, Record] = {}
    for r in sorted(records, key=lambda r: natural_key(r.source_id)):
        key = make_key(conv.name, r.source_id)
        if key in keyed:
            failures.append(Failure(r.source_id, tuple(r.files()),
                                    f"duplicate sample key {key} (also {keyed[key].source_id})", stage="key"))
        else:
            keyed[key] = r
    assigned, report = _assign_splits(conv, list(keyed.values()), p, failures)
    root = common_folder([f for r in records for f in r.files()] + [f for x in failures for f in x.files])
    per_shard = p.shard_samples or max(1, p.shard_size // max(1, worst_case_bytes(p.sample_params()) // 2))
    tasks = []
    for split in SPLITS + tuple(sorted(set(assigned.values()) - set(SPLITS))):
        members = [(r, k) for k, r in keyed.items() if assigned.get(r.source_id) == split]
        random.Random(f"{p.seed}:{split}").shuffle(members)  # mixed shards; the order is part of the recorded plan
        tasks += [Task(split, i // per_shard, tuple(members[i: i + per_shard]))
                  for i in range(0, len(members), per_shard)]
    return tasks, failures, report, inputs, root


# ---------------------------------------------------------------------------------------------------- tasks


class TarShard:
    """A webdataset shard writer: members ``<key>.<entry>`` in sorted entry order, fixed mtime/owner/mode.

    The member layout of ``webdataset.TarWriter``; headers come from ``tarfile.TarInfo`` and the bytes are laid out
    the way ``tarfile`` writes them (header, data, padding to 512; two zero blocks and padding to the record size
    at the end). Each member is one ``writev`` and the sha256 is computed on the way, so the shard is never copied
    or read back; workers do not import torch (which webdataset does) for this.
    """

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.hash = hashlib.sha256()
        self.nbytes = 0

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        for entry in sorted(k for k in sample if k != "__key__"):
            data = sample[entry]
            info = tarfile.TarInfo(f"{key}.{entry}")
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
            info.uname = info.gname = "medprep"
            self._put(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), data,
                      tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE))

    def _put(self, *parts: bytes) -> None:
        total = sum(len(x) for x in parts)
        written = os.writev(self.fd, parts)
        if written != total:  # a short write (rare, e.g. a signal): finish it the slow way
            rest = b"".join(parts)[written:]
            while rest:
                rest = rest[os.write(self.fd, rest):]
        for x in parts:
            self.hash.update(x)
        self.nbytes += total

    @staticmethod
    def member_bytes(sample: dict[str, Any]) -> int:
        """Bytes the members of ``sample`` take: a 512-byte header each (plus a PAX header for names over 99
        characters) and the data padded to 512."""
        total = 0
        for entry, value in sample.items():
            if entry != "__key__":
                name = f"{sample['__key__']}.{entry}"
                total += tarfile.BLOCKSIZE * (1 + 3 * (len(name) > 99)) + -(-len(value) // tarfile.BLOCKSIZE) * 512
        return total

    @staticmethod
    def file_size(members: int) -> int:
        """File size of a shard holding ``members`` bytes: end blocks, padded to the 10240-byte record."""
        return -(-(members + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def close(self) -> tuple[int, str]:
        """End the archive (two zero blocks, padded to a whole record), fsync it; returns (bytes, sha256)."""
        end = self.nbytes + 2 * tarfile.BLOCKSIZE
        self._put(tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))
        os.fsync(self.fd)
        os.close(self.fd)
        return self.nbytes, self.hash.hexdigest()


def run_task(task: Task, src: str, partial: str, p: BuildParams, root: str = "") -> dict[str, Any]:
    """Convert one planned shard; writes ``<partial>/<task>.partNN.tar`` and, last, ``<partial>/<task>.json``.

    Runs in any process (dask worker or the caller); everything it needs comes in its arguments.
    """
    conv = get_converter(p.dataset, **p.options)
    tree = open_source(src)
    sp = p.sample_params()
    mid = modality_id(conv.modality, p.modality_map)
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
                sample, row = convert(conv, shown, loaded, hashes, skey, sid, task.split, mid, sp)
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


def _load_done(partial: Path, task: Task) -> dict[str, Any] | None:
    """A finished task's result, if its record and all its part files are intact."""
    rec = partial / f"{task.name}.json"
    if not rec.exists():
        return None
    res = json.loads(rec.read_text())
    return res if all((partial / pt["file"]).exists() for pt in res["parts"]) else None


# ---------------------------------------------------------------------------------------------------- driver


# dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's adaptive mmap threshold:
# every multi-megabyte image buffer is then a fresh mmap plus page faults (+25% CPU per image, measured). Keep
# buffers up to 32 MiB on the heap and trim it lazily, as in a normal process.
WORKER_ENV = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 256 << 20,
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 << 20,
}


def _execute(tasks: list[Task], src: str, root: str, partial: Path, p: BuildParams, workers: int,
             scheduler: str | None, progress: Callable[[int, int], None] | None) -> list[dict[str, Any]]:
    """Run tasks locally (workers=1, no scheduler) or through dask.distributed; results in task order."""
    results: dict[str, dict[str, Any]] = {}
    if workers <= 1 and scheduler is None:
        for i, t in enumerate(tasks):
            results[t.name] = run_task(t, src, str(partial), p, root)
            if progress:
                progress(i + 1, len(tasks))
    else:
        import dask
        from dask.distributed import Client, LocalCluster, as_completed

        cluster = None
        if scheduler is None:
            with dask.config.set(WORKER_ENV):
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
        try:
            with Client(scheduler or cluster) as client:
                futures = client.map(run_task, tasks, src=src, partial=str(partial), p=p, root=root, pure=False)
                for i, fut in enumerate(as_completed(futures)):
                    r = fut.result()
                    results[r["task"]] = r
                    if progress:
                        progress(i + 1, len(tasks))
        finally:
            if cluster is not None:
                cluster.close()
    return [results[t.name] for t in tasks]


def build(
    dataset: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 1024,
    resize: str = "stretch",
    patch_sizes: tuple[int, ...] = (16, 32, 64),
    modality_map: str = "default",
    seed: int = 0,
    split_rule: str | None = None,
    split_file: str | os.PathLike | None = None,
    group_by: str | None = None,
    shard_size: int = 1_000_000_000,
    shard_samples: int | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> BuildResult:
    """Build ``dataset`` from its official layout under ``src`` into webdataset shards under ``out``.

    Reruns with the same parameters resume an interrupted build or return the finished one unchanged; a finished
    build with other parameters is replaced only with ``overwrite=True``.
    """
    t0 = time.perf_counter()
    options = {k: v for k, v in options.items() if v is not None}
    p = BuildParams(dataset, size, resize, tuple(patch_sizes), modality_map, seed, split_rule,
                    str(split_file) if split_file else None, group_by, int(shard_size), shard_samples, options)
    p.sample_params().check()
    conv = get_converter(dataset, **options)
    modality_id(conv.modality, modality_map)
    if shard_size < 1 or (shard_samples is not None and shard_samples < 1):
        raise BuildError("--shard-size and --shard-samples must be positive")
    out = Path(out)
    tree = open_source(src)
    split_sha = sha256_bytes(Path(split_file).read_bytes()) if split_file else None
    tasks, failures, report, inputs, root = plan(conv, tree, p)
    plan_doc = {"params": p.recorded(split_sha), "medprep_version": __version__,
                "tasks": [[t.name, [k for _, k in t.records]] for t in tasks]}
    plan_sha = sha256_bytes(dumps(plan_doc))

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

    done = {t.name: r for t in tasks if (r := _load_done(partial, t)) is not None}
    todo = [t for t in tasks if t.name not in done]
    fresh = _execute(todo, str(tree.root), root, partial, p, workers, scheduler, progress)
    results = [done.get(t.name) or fresh[todo.index(t)] for t in tasks]

    all_failures = [{**f.row(), "files": [x[len(root):] for x in f.files]} for f in failures]
    all_failures += [f for r in results for f in r["failures"]]
    all_failures.sort(key=lambda f: natural_key(f["source_id"]))
    if strict and all_failures:
        shown = "\n  ".join(f"{f['source_id']}: {f['reason']}" for f in all_failures[:10])
        raise BuildError(f"--strict: {len(all_failures)} input(s) could not be converted:\n  {shown}\n"
                         f"(nothing was published; partial results kept in {partial})")
    staged = partial / "publish"
    if staged.exists():
        shutil.rmtree(staged)  # an earlier publish was interrupted: redo it from the kept parts
    staged.mkdir()
    manifest = _publish(staged, partial, tasks, results, all_failures, p, conv, report, inputs, split_sha, plan_sha)
    _swap_in(staged, out, partial)
    shutil.rmtree(partial)
    return BuildResult(out, manifest, all_failures, time.perf_counter() - t0, skipped_tasks=len(done))


def staging_dir(out: Path) -> Path:
    """Where a build of ``out`` works until it is published: a hidden sibling ``.<name>.partial``."""
    return out.parent / f".{out.name}{PARTIAL}"


def _swap_in(staged: Path, out: Path, partial: Path) -> None:
    """Make the finished ``staged`` folder the build at ``out`` with directory renames: readers see the old build
    or the new one, never a mix (a replaced build is moved aside first, then deleted)."""
    if out.exists():
        old = partial / "replaced"
        os.replace(out, old)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, out)


def _publish(out: Path, partial: Path, tasks: list[Task], results: list[dict[str, Any]],
             failures: list[dict[str, Any]], p: BuildParams, conv: Converter, report: dict[str, Any], inputs: int,
             split_sha: str | None, plan_sha: str) -> Manifest:
    """Give parts their final shard names in plan order, then write samples, failures, wids and the manifest."""
    shards: list[ShardEntry] = []
    rows: list[dict[str, Any]] = []
    counter: dict[str, int] = {}
    for task, res in zip(tasks, results):
        names = []
        for part in res["parts"]:
            n = counter.get(task.split, 0)
            counter[task.split] = n + 1
            name = f"{task.split}-{n:06d}.tar"
            os.link(partial / part["file"], out / name)  # parts stay until the swap, so a rerun can redo this
            shards.append(ShardEntry(name, task.split, part["nsamples"], part["bytes"], part["sha256"]))
            names.append(name)
        rows += [{**{k: v for k, v in r.items() if k != "part"}, "shard": names[r["part"]]} for r in res["rows"]]
    seen: dict[str, str] = {}
    for r in rows:
        if r["key"] in seen:
            raise BuildError(f"two samples got the key {r['key']} (from {seen[r['key']]} and {r['source_id']}); "
                             f"rename one input or report this as a converter bug")
        seen[r["key"]] = r["source_id"]
    samples_b, failures_b = jsonl_bytes(rows), jsonl_bytes(failures)
    atomic_write(out / SAMPLES, samples_b)
    atomic_write(out / FAILURES, failures_b)
    split_counts = {s: sum(x.nsamples for x in shards if x.split == s) for s in dict.fromkeys(x.split for x in shards)}
    for split in split_counts:
        atomic_write(out / f"{split}.wids.json",
                     dumps(wids_index([s for s in shards if s.split == split], f"{conv.name}-{split}")))
    params = p.recorded(split_sha)
    params["plan_sha256"] = plan_sha
    manifest = Manifest(
        dataset=conv.name, modality=conv.modality, modality_id=modality_id(conv.modality, p.modality_map),
        medprep_version=__version__, params=params, shards=shards,
        counts={"inputs": inputs, "converted": sum(r["converted"] for r in results), "samples": len(rows),
                "failures": len(failures), "splits": split_counts},
        split_report=report,
        files={"samples": SAMPLES, "samples_sha256": sha256_bytes(samples_b), "failures": FAILURES,
               "failures_sha256": sha256_bytes(failures_b)},
    )
    atomic_write(out / MANIFEST, dumps(manifest.to_json()))
    return manifest


__all__ = ["BuildError", "BuildParams", "BuildResult", "Task", "build", "plan", "run_task"]
