"""The manifest of a built dataset: the contract between ``prep`` (writer) and ``loaders``/``distill`` (readers).

A built dataset is a folder (or fsspec URL) holding::

    manifest.json          build parameters, medprep version, counts, per shard: name, split, nsamples, bytes, sha256
    samples.jsonl          one row per sample, in shard order: key, split, shard, source, hashes, stats
    failures.jsonl         one row per input that could not be converted, with the reason
    <split>-NNNNNN.tar     webdataset shards
    <split>.wids.json      the shard list of one split in the wids-shard-index-v1 format

A build published to an object store (``s3://...``) keeps everything but ``manifest.json`` in a build folder of its
own, ``b-<16 hex>/`` (shards, samples, failures, wids indexes, card): the manifest names them by that folder
(``b-.../train-000000.tar``, ``files.samples`` ``b-.../samples.jsonl``) and is written last, in one PUT, so a reader
sees the previous build or the new one, never a mix. A local build has no build folder (its folder is swapped in).

The manifest's ``generation`` names the build's content (shard list and samples list): identical rebuilds keep it,
a replaced build changes it, and readers compare it to notice a dataset replaced under them. Format v2 added it;
v1 manifests are read with the generation derived from their content.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from . import fsio
from .modalities import MODALITY_MAPS, N_MODALITIES, recorded_table

FORMAT = "medprep-manifest-v2"
FORMATS = ("medprep-manifest-v1", FORMAT)  # formats this version reads (v1: no generation recorded)
WIDS_KIND = "wids-shard-index-v1"
MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
FAILURES = "failures.jsonl"
SPLITS = ("train", "valid", "test")
CORE_ENTRIES = ("image.png", "mask.png", "modality.cls", "meta.json")  # in every sample (DESIGN.md, Sample format)


@dataclass(frozen=True)
class ShardEntry:
    """One tar shard of a built dataset."""

    name: str
    split: str
    nsamples: int
    bytes: int
    sha256: str


PLAIN_TAR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")  # a plain file name inside the dataset folder
BUILD_FOLDER = re.compile(r"b-[0-9a-f]{16}")  # the folder of one build published to an object store
SHARD_NAME = re.compile(rf"(?:{BUILD_FOLDER.pattern}/)?{PLAIN_TAR.pattern}")  # in the folder or its build folder
SHA256 = re.compile(r"[0-9a-f]{64}")
_MANIFEST_FIELDS = {"dataset": str, "modality": str, "modality_id": int, "medprep_version": str, "params": dict,
                    "shards": list, "counts": dict, "split_report": dict, "files": dict, "format": str,
                    "generation": str}
_SHARD_FIELDS = {"name": str, "split": str, "nsamples": int, "bytes": int, "sha256": str}


@dataclass
class Manifest:
    """Parsed ``manifest.json``."""

    dataset: str
    modality: str
    modality_id: int
    medprep_version: str
    params: dict[str, Any]
    shards: list[ShardEntry]
    counts: dict[str, Any]
    split_report: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    generation: str = ""  # derived from the content when not given (see content_generation)

    def __post_init__(self) -> None:
        if not self.generation:
            self.generation = self.content_generation()

    def content_generation(self) -> str:
        """The generation of this content: a hash of the dataset name, the shard list and the samples list sha256,
        i.e. of everything a reader reads."""
        doc = {"dataset": self.dataset, "shards": [asdict(s) for s in self.shards],
               "samples_sha256": self.files.get("samples_sha256")}
        return fsio.sha256_bytes(fsio.dumps(doc))[:16]

    @property
    def folder(self) -> str:
        """The build folder holding everything but the manifest (``b-<hex>`` of a build published to an object
        store), or "" when the files lie beside the manifest."""
        return self.files.get("samples", SAMPLES).rpartition("/")[0]

    def path(self, name: str) -> str:
        """Where the build's file ``name`` (``samples.jsonl``, ``card.json``, a wids index) lies, relative to the
        manifest's folder."""
        return f"{self.folder}/{name}" if self.folder else name

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shards"] = [asdict(s) for s in self.shards]
        return d

    @classmethod
    def from_json(cls, d: Any) -> "Manifest":
        """Parse a manifest document; a ``ValueError`` lists everything that does not match the schema."""
        problems = schema_problems(d)
        if problems:
            raise ValueError("not a valid medprep manifest: " + "; ".join(problems))
        d = dict(d)
        d["shards"] = [ShardEntry(**s) for s in d["shards"]]
        return cls(**d)

    def splits(self) -> list[str]:
        """Split names present, in canonical order (train, valid, test, then any other)."""
        present = {s.split for s in self.shards}
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    def shards_of(self, split: str | None = None) -> list[ShardEntry]:
        return [s for s in self.shards if split is None or s.split == split]

    def nsamples(self, split: str | None = None) -> int:
        return sum(s.nsamples for s in self.shards_of(split))


def wids_index(shards: list[ShardEntry], name: str) -> dict[str, Any]:
    """The wids-shard-index-v1 document for ``shards`` (urls relative to the index file, which lies in their
    folder)."""
    return {
        "__kind__": WIDS_KIND,
        "wids_version": 1,
        "name": name,
        "shardlist": [{"url": plain_name(s.name), "nsamples": s.nsamples, "filesize": s.bytes} for s in shards],
    }


def plain_name(name: str) -> str:
    """A shard's file name without its build folder."""
    return name.rpartition("/")[2]


def _typed(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def schema_problems(d: Any) -> list[str]:
    """What in the manifest document ``d`` does not match the schema of the formats this version reads (empty if
    it matches): format, fields and their types, shard entries (plain ``.tar`` names, unique; counts; sha256)."""
    if not isinstance(d, dict):
        return [f"expected a JSON object, found {type(d).__name__}"]
    if d.get("format") not in FORMATS:
        return [f"format is {d.get('format')!r}, expected one of {', '.join(FORMATS)} (not a medprep build, or "
                f"one written by another medprep version)"]
    required = {"dataset", "modality", "modality_id", "medprep_version", "params", "shards", "counts"}
    if d["format"] == FORMAT:
        required.add("generation")
    problems = [f"field {k!r} is missing" for k in sorted(required - set(d))]
    problems += [f"unknown field {k!r}" for k in sorted(set(d) - set(_MANIFEST_FIELDS))]
    problems += [f"field {k!r} is {type(d[k]).__name__}, expected {_MANIFEST_FIELDS[k].__name__}"
                 for k in sorted(set(d) & set(_MANIFEST_FIELDS)) if not _typed(d[k], _MANIFEST_FIELDS[k])]
    if problems or not isinstance(d.get("shards"), list):
        return problems
    recorded = d["params"].get("modality_table")
    if recorded is not None and not (isinstance(recorded, dict) and recorded and all(
            isinstance(k, str) and _typed(v, int) and v >= 0 for k, v in recorded.items())):
        return problems + [f"params.modality_table is {json.dumps(recorded)[:80]}, expected an object of modality "
                           f"names to whole-number ids >= 0 (the build's --modality-map table)"]
    table = recorded_table(d["params"])
    names = table if table is not None and "modality_table" in d["params"] else MODALITY_MAPS["default"]
    if d["modality"] not in names:
        problems.append(f"modality is {d['modality']!r}, expected one of the build's modality table "
                        f"({', '.join(names)})")
    ids = sorted(set(table.values())) if table is not None else list(range(N_MODALITIES))
    if d["modality_id"] not in ids:
        problems.append(f"modality_id is {d['modality_id']}, expected an id of the build's modality table "
                        f"({', '.join(map(str, ids))})")
    for k, v in d["counts"].items():
        values = v.values() if isinstance(v, dict) else [v]
        if not all(_typed(x, int) and x >= 0 for x in values):
            problems.append(f"counts.{k} is {v!r}, expected a non-negative integer (or an object of them)")
    files = d.get("files") if isinstance(d.get("files"), dict) else {}
    samples = files.get("samples", SAMPLES)
    folder = samples.rpartition("/")[0] if isinstance(samples, str) else ""
    if folder and not BUILD_FOLDER.fullmatch(folder):
        problems.append(f"files.samples {samples!r}: expected samples.jsonl beside the manifest or in a build folder "
                        f"b-<16 hex digits>/")
    names: set[str] = set()
    for i, s in enumerate(d["shards"]):
        where = f"shards[{i}]"
        if not isinstance(s, dict) or set(s) != set(_SHARD_FIELDS):
            problems.append(f"{where}: expected an object with exactly {', '.join(_SHARD_FIELDS)}")
            continue
        bad = [k for k, t in _SHARD_FIELDS.items() if not _typed(s[k], t)]
        if bad:
            problems.append(f"{where}: {', '.join(bad)} of the wrong type")
            continue
        where = f"{where} ({s['name']})"
        if not SHARD_NAME.fullmatch(s["name"]):
            problems.append(f"{where}: not a plain .tar file name inside the dataset folder")
        elif s["name"].rpartition("/")[0] != folder:
            problems.append(f"{where}: not in the build's folder {folder or '(the manifest folder)'}")
        elif s["name"] in names:
            problems.append(f"{where}: listed twice")
        names.add(s["name"])
        if s["nsamples"] < 0 or s["bytes"] < 0:
            problems.append(f"{where}: negative nsamples or bytes")
        if not SHA256.fullmatch(s["sha256"]):
            problems.append(f"{where}: sha256 is not 64 lowercase hex digits")
    return problems


def sample_row_problem(row: Any, shards: dict[str, ShardEntry]) -> str:
    """What in one ``samples.jsonl`` row does not match the schema ("" if it matches): an object whose ``key`` is
    a non-empty string and whose ``split`` and ``shard`` name a shard of the manifest holding that split."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, expected an object"
    for name in ("key", "split", "shard"):
        if not isinstance(row.get(name), str) or not row[name]:
            return f"field {name!r} is {row.get(name, 'missing')!r}, expected a non-empty string"
    entry = shards.get(row["shard"])
    if entry is None:
        return f"field 'shard' is {row['shard']!r}, expected a shard the manifest lists"
    if entry.split != row["split"]:
        return f"field 'split' is {row['split']!r}, expected {entry.split!r} (the split of shard {entry.name})"
    return ""


def wids_problems(doc: Any, shards: list[ShardEntry]) -> list[str]:
    """What in the wids index ``doc`` of one split disagrees with that split's ``shards`` in the manifest: its
    kind, and per entry the url (a plain name inside the dataset folder, the manifest's shard in the same place),
    nsamples and filesize. Empty if it matches."""
    if not isinstance(doc, dict) or doc.get("__kind__") != WIDS_KIND:
        kind = doc.get("__kind__") if isinstance(doc, dict) else type(doc).__name__
        return [f"__kind__ is {kind!r}, expected {WIDS_KIND!r}"]
    listed = doc.get("shardlist")
    if not isinstance(listed, list) or not all(isinstance(x, dict) for x in listed):
        return ["shardlist is not a list of objects"]
    problems = []
    for i, (item, shard) in enumerate(zip(listed, shards)):
        url = item.get("url")
        if not isinstance(url, str) or not PLAIN_TAR.fullmatch(url):
            problems.append(f"shardlist[{i}]: url {url!r} is not a plain shard name inside the dataset folder "
                            f"(absolute urls, '..' and sub-folders are refused)")
        elif url != plain_name(shard.name):
            problems.append(f"shardlist[{i}]: url {url!r}, the manifest lists {shard.name!r} there")
        elif item.get("nsamples") != shard.nsamples or item.get("filesize") != shard.bytes:
            problems.append(f"shardlist[{i}] ({url}): nsamples {item.get('nsamples')!r}, filesize "
                            f"{item.get('filesize')!r}; the manifest says {shard.nsamples}, {shard.bytes}")
    if len(listed) != len(shards):
        problems.append(f"lists {len(listed)} shards, the manifest {len(shards)}")
    return problems
