"""Publishing a build: name the finished parts in plan order, write the lists, indexes and card and, last, the
manifest.

:func:`publish` writes into the folder ``staging.py`` gives it: locally the staged folder that is then swapped in
for the output folder; in an object store the build's own folder ``<out>/b-<hex>/`` (shards copied from its
``parts/``, server-side) with ``<out>/manifest.json`` written last, in one PUT, naming them.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from medprep import __version__
from medprep.manifests import (
    FAILURES, MANIFEST, SAMPLES, Manifest, ShardEntry, atomic_write, dumps, fs_and_path, join, jsonl_bytes,
    sha256_bytes, wids_index,
)
from medprep.manifests.card import CARD, README, dataset_card, markdown

from .datasets import Converter, modality_id
from .params import BuildError, BuildParams
from .plan import Plan
from .recipe import RECIPE, recipe_toml
from .task import TaskResult


def publish(out: str | Path, partial: str | Path, plan: Plan, results: list[TaskResult],
            failures: list[dict[str, Any]], p: BuildParams, conv: Converter, split_sha: str | None, plan_sha: str,
            origin: dict[str, Any], inputs_sha: str, folder: str = "") -> Manifest:
    """Give the parts in ``partial`` their final shard names in ``out`` (in its build ``folder``, when given) in
    plan order (hard links, or copies inside an object store, so a rerun can redo this), then write samples,
    failures, wids indexes, the dataset card (``card.json``, ``README.md``), the recipe (``recipe.toml``, from
    ``origin["source"]``) beside them and, last, the manifest in ``out``. ``origin`` (the command line and the
    source folder) is recorded in the card, not in the manifest: the manifest depends on the inputs and parameters
    only (an archive and its extracted folder, or another spelling of the same command, give the same bytes)."""

    def at(name: str) -> str:
        return f"{folder}/{name}" if folder else name

    shards: list[ShardEntry] = []
    rows: list[dict[str, Any]] = []
    counter: dict[str, int] = {}
    for task, res in zip(plan.tasks, results):
        names = []
        for part in res.parts:
            n = counter.get(task.split, 0)
            counter[task.split] = n + 1
            name = at(f"{task.split}-{n:06d}.tar")
            _place(join(partial, part.file), join(out, name))
            shards.append(ShardEntry(name, task.split, part.nsamples, part.bytes, part.sha256))
            names.append(name)
        rows += [{**{k: v for k, v in r.items() if k != "part"}, "shard": names[r["part"]]} for r in res.rows]
    seen: dict[str, str] = {}
    for r in rows:
        if r["key"] in seen:
            raise BuildError(f"two samples got the key {r['key']} (from {seen[r['key']]} and {r['source_id']}); "
                             f"rename one input or report this as a converter bug")
        seen[r["key"]] = r["source_id"]
    samples_b, failures_b = jsonl_bytes(rows), jsonl_bytes(failures)
    atomic_write(join(out, at(SAMPLES)), samples_b)
    atomic_write(join(out, at(FAILURES)), failures_b)
    split_counts = {s: sum(x.nsamples for x in shards if x.split == s) for s in dict.fromkeys(x.split for x in shards)}
    for split in split_counts:
        atomic_write(join(out, at(f"{split}.wids.json")),
                     dumps(wids_index([s for s in shards if s.split == split], f"{conv.name}-{split}")))
    params = p.recorded(split_sha)
    params["plan_sha256"], params["inputs_sha256"] = plan_sha, inputs_sha
    manifest = Manifest(
        dataset=conv.name, modality=_dataset_modality(conv, rows), modality_id=_dataset_modality_id(p, rows),
        medprep_version=__version__, params=params, shards=shards,
        counts={"inputs": plan.inputs, "converted": sum(r.converted for r in results), "samples": len(rows),
                "failures": len(failures), "splits": split_counts},
        split_report=plan.split_report,
        files={"samples": at(SAMPLES), "samples_sha256": sha256_bytes(samples_b), "failures": at(FAILURES),
               "failures_sha256": sha256_bytes(failures_b)},
    )
    card = dataset_card(manifest, rows, failures, origin)
    atomic_write(join(out, at(CARD)), dumps(card))
    atomic_write(join(out, at(README)), markdown(card).encode())
    atomic_write(join(out, at(RECIPE)), recipe_toml(p, origin["source"]))
    atomic_write(join(out, MANIFEST), dumps(manifest.to_json()))  # last: one rename, or one PUT of an object
    return manifest


def _dataset_modality(conv: Converter, rows: list[dict[str, Any]]) -> str:
    """The manifest's modality: the converter's, or where each input has its own (medsam-npz) the most common
    modality of the samples (ties: the first in name order; no sample: ``unknown``)."""
    if conv.modality is not None:
        return conv.modality
    names = Counter(r["modality"] for r in rows)
    return min(names, key=lambda m: (-names[m], m)) if names else "unknown"


def _place(src: str, dst: str) -> None:
    """Give the finished part ``src`` its shard name ``dst``: a hard link in a local folder, a copy inside an
    object store (server-side)."""
    fs, path = fs_and_path(src)
    if isinstance(fs, LocalFileSystem):
        os.link(path, fs_and_path(dst)[1])
    else:
        fs.copy(path, fs_and_path(dst)[1])


def _dataset_modality_id(p: BuildParams, rows: list[dict[str, Any]]) -> int:
    """The manifest's modality id: the build's, or under a per-sample id map (or per-input modality) the most
    common id of its samples (ties: the smallest; no sample: the modality's id in the paper's esp-medsam order, or
    0 without a modality)."""
    if p.modality_id is not None:
        return p.modality_id
    ids = Counter(r["modality_id"] for r in rows)
    if not ids:
        modality = p.converter().modality
        return 0 if modality is None else modality_id(modality, "esp-medsam")
    return min(ids, key=lambda i: (-ids[i], i))


__all__ = ["publish"]
