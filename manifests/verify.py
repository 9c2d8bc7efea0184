"""``medprep verify``: check everything a reader of a built dataset relies on, and list every problem found.

Checked: the manifest (JSON, schema, format version, its generation against its content, its counts against its
shard list); samples.jsonl and failures.jsonl (present, JSON lines, sha256 as recorded); every shard (present, size
and sha256, readable tar with well-formed member names, the core entries in every sample, sample count and keys in
order against the manifest and samples.jsonl); every split's wids index (present, entries equal to the manifest's,
urls plain names inside the dataset folder); and no file in the folder that a build does not write. A problem is a
:class:`Problem` naming the file; nothing here raises on a damaged dataset. :func:`build_problems` is the quick
part of it (no shard read) that a build runs before it replaces a folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from . import fsio
from .schema import BUILD_FOLDER, CORE_ENTRIES, FAILURES, MANIFEST, SAMPLES, Manifest, ShardEntry, schema_problems, wids_problems
from .tar import ShardError, ShardIndex

WIDS_SUFFIX = ".wids.json"
LATER_FILES = ("card.json", "README.md", "recipe.toml", "leakage.json")  # written beside a build by other commands
MAX_PER_FILE = 20  # problems listed per file for per-line or per-sample findings; the rest are counted


@dataclass(frozen=True)
class Problem:
    """One problem: the file it is in (relative to the dataset folder; ``.`` for the folder) and what is wrong."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class VerifyReport:
    """The result of :func:`verify`."""

    root: str
    problems: list[Problem] = field(default_factory=list)
    shards: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, message: str) -> None:
        self.problems.append(Problem(file, message))

    def add_capped(self, file: str, messages: list[str]) -> None:
        """Add per-line/per-sample ``messages`` of ``file``, the first ``MAX_PER_FILE`` of them, then a count."""
        for m in messages[:MAX_PER_FILE]:
            self.add(file, m)
        if len(messages) > MAX_PER_FILE:
            self.add(file, f"... and {len(messages) - MAX_PER_FILE} more problems of this file")

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "ok": self.ok, "shards": self.shards, "samples": self.samples,
                "problems": [asdict(p) for p in self.problems]}

    def summary(self) -> str:
        """``FAIL <file>: <problem>`` per problem, or one ``ok`` line."""
        if self.problems:
            return "\n".join(f"FAIL {p}" for p in self.problems)
        return f"ok: {self.shards} shards, {self.samples} samples match {self.root}/{MANIFEST}"


def verify(root: str | os.PathLike) -> VerifyReport:
    """Check the built dataset at ``root`` (local path or fsspec URL); see the module docstring."""
    report = VerifyReport(str(root).rstrip("/"))
    fs, base = fsio.fs_and_path(report.root)
    if not fs.isdir(base):
        report.add(".", f"{report.root} is not a folder: expected a dataset folder written by 'medprep build'")
        return report
    present = _listing(fs, base)
    manifest = _manifest(report, present)
    if manifest is not None and manifest.folder:
        present.update(_listing(fs, f"{base}/{manifest.folder}", f"{manifest.folder}/"))
    where = manifest.path if manifest is not None else (lambda name: name)
    rows = _jsonl(report, where(SAMPLES), present, manifest, ("key", "split", "shard"))
    _jsonl(report, where(FAILURES), present, manifest, ())
    if manifest is None:
        return report
    report.shards, report.samples = len(manifest.shards), manifest.nsamples()
    _counts(report, manifest, rows)
    by_shard = _rows_by_shard(report, manifest, rows)
    for s in manifest.shards:
        _shard(report, s, by_shard.get(s.name) if rows is not None else None, present)
    _wids(report, manifest, present)
    _strays(report, manifest, present)
    return report


def build_problems(root: str | os.PathLike) -> list[Problem]:
    """What keeps the folder ``root`` from being provably a medprep build, found without reading any shard: a
    ``manifest.json`` of the medprep schema and format, every shard it lists present, and no file or folder that a
    build does not write. Empty when it is one; a build replaces a folder (``--overwrite``) only then."""
    report = VerifyReport(str(root).rstrip("/"))
    fs, base = fsio.fs_and_path(report.root)
    present = _listing(fs, base)
    manifest = _manifest(report, present)
    if manifest is not None and manifest.folder:
        present.update(_listing(fs, f"{base}/{manifest.folder}", f"{manifest.folder}/"))
    if manifest is not None:
        for s in manifest.shards:
            if s.name not in present:
                report.add(s.name, "missing")
        _strays(report, manifest, present)
    return report.problems


def _listing(fs: Any, path: str, prefix: str = "") -> dict[str, str]:
    """The names in the folder ``path`` (``prefix`` put before each) and their kind (``file``, ``directory``)."""
    return {prefix + os.path.basename(str(x["name"]).rstrip("/")): x["type"]
            for x in fs.ls(path, detail=True, refresh=True)}


def _manifest(report: VerifyReport, present: dict[str, str]) -> Manifest | None:
    """The parsed manifest, or None (with the problems added) when it is missing or does not match the schema."""
    if MANIFEST not in present:
        report.add(MANIFEST, "missing: not a medprep build, or a build that was interrupted before publishing")
        return None
    try:
        doc = json.loads(fsio.read_bytes(fsio.join(report.root, MANIFEST)))
    except ValueError as e:
        report.add(MANIFEST, f"not JSON ({e})")
        return None
    problems = schema_problems(doc)
    for p in problems:
        report.add(MANIFEST, p)
    if problems:
        return None
    m = Manifest.from_json(doc)
    if "generation" in doc and m.generation != m.content_generation():
        report.add(MANIFEST, f"generation {m.generation} does not match its content ({m.content_generation()}): "
                             f"the manifest was edited after the build")
    return m


def _jsonl(report: VerifyReport, name: str, present: dict[str, str], manifest: Manifest | None,
           required: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """Rows of the JSON-lines file ``name`` (None if it is missing or unreadable), checked for JSON objects with
    the ``required`` string fields and against the sha256 the manifest records."""
    if name not in present:
        report.add(name, "missing: every build writes it")
        return None
    data = fsio.read_bytes(fsio.join(report.root, name))
    key = f"{name.rpartition('/')[2].split('.')[0]}_sha256"
    if manifest is not None and key in manifest.files and fsio.sha256_bytes(data) != manifest.files[key]:
        report.add(name, "sha256 differs from the manifest")
    rows, bad = [], []
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            bad.append(f"line {n} is not JSON ({e})")
            continue
        missing = [k for k in required if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            bad.append(f"line {n} lacks the string field(s) {', '.join(missing)}")
            continue
        rows.append(row)
    report.add_capped(name, bad)
    return None if bad else rows


def _counts(report: VerifyReport, m: Manifest, rows: list[dict[str, Any]] | None) -> None:
    """The manifest's counts against its shard list, and the samples list's length against both."""
    total = m.nsamples()
    if not m.shards and (rows or m.counts.get("samples")):
        report.add(MANIFEST, f"lists no shards but {len(rows or []) or m.counts.get('samples')} samples")
    if m.counts.get("samples") != total:
        report.add(MANIFEST, f"counts.samples is {m.counts.get('samples')!r} but its shards hold {total} samples")
    splits = {s: m.nsamples(s) for s in m.splits()}
    if m.counts.get("splits") != splits:
        report.add(MANIFEST, f"counts.splits is {m.counts.get('splits')!r} but its shards hold {splits}")
    if rows is not None and len(rows) != total:
        report.add(SAMPLES, f"lists {len(rows)} samples, the manifest's shards hold {total}")


def _rows_by_shard(report: VerifyReport, m: Manifest, rows: list[dict[str, Any]] | None) -> dict[str, list[str]]:
    """Keys per shard name from the samples list (in its order); unknown shards, wrong splits and duplicate keys
    are problems of samples.jsonl."""
    out: dict[str, list[str]] = {}
    split_of = {s.name: s.split for s in m.shards}
    bad, seen = [], set()
    for n, r in enumerate(rows or [], 1):
        if r["key"] in seen:
            bad.append(f"line {n}: key {r['key']} listed twice")
        seen.add(r["key"])
        if r["shard"] not in split_of:
            bad.append(f"line {n} ({r['key']}): shard {r['shard']} is not in the manifest")
        elif r["split"] != split_of[r["shard"]]:
            bad.append(f"line {n} ({r['key']}): split {r['split']}, but its shard {r['shard']} is in "
                       f"{split_of[r['shard']]}")
        out.setdefault(r["shard"], []).append(r["key"])
    report.add_capped(SAMPLES, bad)
    return out


def _shard(report: VerifyReport, s: ShardEntry, keys: list[str] | None, present: dict[str, str]) -> None:
    """One shard's file: size, sha256, tar contents against the manifest and (given) the samples list's keys."""
    if s.name not in present:
        report.add(s.name, "missing")
        return
    url = fsio.join(report.root, s.name)
    fs, path = fsio.fs_and_path(url)
    size = fs.size(path)
    if size != s.bytes:
        report.add(s.name, f"{size} bytes, manifest says {s.bytes}")
    elif fsio.sha256_file(url) != s.sha256:
        report.add(s.name, "sha256 differs from the manifest")
    try:
        with fs.open(path, "rb") as f:
            index = ShardIndex(f, s.name)
    except ShardError as e:
        report.add(s.name, str(e).removeprefix(f"{s.name}: "))
        return
    found = index.keys()
    if len(found) != s.nsamples:
        report.add(s.name, f"holds {len(found)} samples, the manifest says {s.nsamples}")
    lacking = [f"sample {x.key} lacks {', '.join(e for e in CORE_ENTRIES if e not in x.entries)}"
               for x in index.samples if not set(CORE_ENTRIES) <= set(x.entries)]
    report.add_capped(s.name, lacking)
    if keys is not None and keys != found:
        extra, missing = sorted(set(found) - set(keys)), sorted(set(keys) - set(found))
        if extra or missing:
            report.add(s.name, f"keys differ from {SAMPLES}: {len(extra)} only in the tar {extra[:3]}, "
                               f"{len(missing)} only in {SAMPLES} {missing[:3]}")
        else:
            report.add(s.name, f"samples are in another order than in {SAMPLES}")


def _wids(report: VerifyReport, m: Manifest, present: dict[str, str]) -> None:
    """Every split's wids index against the manifest."""
    for split in m.splits():
        name = m.path(f"{split}{WIDS_SUFFIX}")
        if name not in present:
            report.add(name, f"missing: the wids index of split {split}")
            continue
        try:
            doc = json.loads(fsio.read_bytes(fsio.join(report.root, name)))
        except ValueError as e:
            report.add(name, f"not JSON ({e})")
            continue
        for p in wids_problems(doc, m.shards_of(split)):
            report.add(name, p)


def _strays(report: VerifyReport, m: Manifest, present: dict[str, str]) -> None:
    """Files and folders that a build does not write (nor the commands that add files beside one)."""
    expected = {MANIFEST, *LATER_FILES, *map(m.path, (SAMPLES, FAILURES, *LATER_FILES)), *(s.name for s in m.shards),
                *(m.path(f"{split}{WIDS_SUFFIX}") for split in m.splits())}
    for name, kind in sorted(present.items()):
        if name in expected:
            continue
        if m.folder and kind == "directory" and BUILD_FOLDER.fullmatch(name):
            continue  # this build's folder, or an earlier build's kept by --keep-generations
        if kind != "file":
            report.add(name, "unexpected folder in a built dataset")
        elif name.endswith(WIDS_SUFFIX):
            report.add(name, "wids index of a split the manifest does not list")
        elif name.endswith(".tar"):
            report.add(name, "shard not listed in the manifest")
        else:
            report.add(name, "unexpected file: not written by 'medprep build'")
