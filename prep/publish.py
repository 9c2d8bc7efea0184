"""Publishing a build: name the finished parts in plan order, write the indexes and the manifest, swap the folder in.

A build works in a hidden sibling ``.<name>.partial/`` of its output folder (:func:`staging_dir`); publishing
assembles the final folder inside it (``publish/``) and renames it to the output folder, so a reader sees no build,
the previous one or the new one, never a partial one.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from medprep import __version__
from medprep.manifests import (
    FAILURES, MANIFEST, SAMPLES, Manifest, ShardEntry, atomic_write, dumps, jsonl_bytes, sha256_bytes, wids_index,
)
from medprep.manifests.card import CARD, README, dataset_card, markdown

from .datasets import Converter, modality_id
from .params import BuildError, BuildParams
from .plan import Plan

PARTIAL = ".partial"


def staging_dir(out: Path) -> Path:
    """Where a build of ``out`` works until it is published: a hidden sibling ``.<name>.partial``."""
    return out.parent / f".{out.name}{PARTIAL}"


def swap_in(staged: Path, out: Path, partial: Path) -> None:
    """Make the finished ``staged`` folder the build at ``out`` with directory renames: readers see the old build
    or the new one, never a mix (a replaced build is moved aside into ``partial``, deleted with it)."""
    if out.exists():
        os.replace(out, partial / "replaced")
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, out)


def publish(out: Path, partial: Path, plan: Plan, results: list[dict[str, Any]], failures: list[dict[str, Any]],
            p: BuildParams, conv: Converter, split_sha: str | None, plan_sha: str,
            origin: dict[str, Any]) -> Manifest:
    """Give the parts in ``partial`` their final shard names in ``out`` in plan order (hard links, so a rerun can
    redo this), then write samples, failures, wids indexes, the dataset card (``card.json``, ``README.md``) and,
    last, the manifest. ``origin`` (the command line and the source folder) is recorded in the card, not in the
    manifest: the manifest depends on the inputs and parameters only (an archive and its extracted folder, or
    another spelling of the same command, give the same bytes)."""
    shards: list[ShardEntry] = []
    rows: list[dict[str, Any]] = []
    counter: dict[str, int] = {}
    for task, res in zip(plan.tasks, results):
        names = []
        for part in res["parts"]:
            n = counter.get(task.split, 0)
            counter[task.split] = n + 1
            name = f"{task.split}-{n:06d}.tar"
            os.link(partial / part["file"], out / name)
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
        dataset=conv.name, modality=conv.modality, modality_id=_dataset_modality_id(p, rows),
        medprep_version=__version__, params=params, shards=shards,
        counts={"inputs": plan.inputs, "converted": sum(r["converted"] for r in results), "samples": len(rows),
                "failures": len(failures), "splits": split_counts},
        split_report=plan.split_report,
        files={"samples": SAMPLES, "samples_sha256": sha256_bytes(samples_b), "failures": FAILURES,
               "failures_sha256": sha256_bytes(failures_b)},
    )
    card = dataset_card(manifest, rows, failures, origin)
    atomic_write(out / CARD, dumps(card))
    atomic_write(out / README, markdown(card).encode())
    atomic_write(out / MANIFEST, dumps(manifest.to_json()))
    return manifest


def _dataset_modality_id(p: BuildParams, rows: list[dict[str, Any]]) -> int:
    """The manifest's modality id: the build's, or under a per-sample id map the most common id of its samples
    (ties: the smallest; no sample: the modality's id in the paper's esp-medsam order)."""
    if p.modality_id is not None:
        return p.modality_id
    ids = Counter(r["modality_id"] for r in rows)
    if not ids:
        return modality_id(p.converter().modality, "esp-medsam")
    return min(ids, key=lambda i: (-ids[i], i))


__all__ = ["PARTIAL", "publish", "staging_dir", "swap_in"]
