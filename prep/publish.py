"""Publishing a build: name the finished parts in plan order, write the indexes and the manifest, swap the folder in.

A build published to an object store (``--out s3://...``) has no rename: its tasks upload their parts into a build
folder of its own, ``<out>/b-<hex>/parts/`` (:func:`build_folder`), publishing copies them to their shard names in
that folder, writes the lists and the card there and, last, ``<out>/manifest.json`` naming them (one PUT); earlier
build folders are removed after that (:func:`prune`, ``--keep-generations``).

A local build works in a folder of its own plan, ``.<name>.partial/<plan>/`` beside its output folder
(:func:`plan_staging`; builds of other parameters never share parts); publishing assembles the final folder inside
it (``publish/``) and renames it to the output folder, so a reader sees no build, the previous one or the new one,
never a partial one. Only a folder that is provably a medprep build is ever replaced (:func:`existing_build`).
"""

from __future__ import annotations

import os
import shutil
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
from medprep.manifests.dataset import BuiltDataset
from medprep.manifests.schema import BUILD_FOLDER
from medprep.manifests.verify import build_problems

from .datasets import Converter, modality_id
from .params import BuildError, BuildParams
from .plan import Plan
from .recipe import RECIPE, recipe_toml
from .task import TaskResult

PARTIAL = ".partial"


def staging_dir(out: Path) -> Path:
    """Where builds of ``out`` work until they are published: a hidden sibling ``.<name>.partial``, one folder per
    plan in it."""
    return out.parent / f".{out.name}{PARTIAL}"


def plan_staging(out: Path, plan_sha: str) -> Path:
    """The working folder of the plan ``plan_sha`` (created; a resumed build finds its finished parts there). The
    folders of other plans are interrupted builds with other parameters or inputs: removed (the caller holds the
    dataset's lock, so no build is using them)."""
    root = staging_dir(out)
    mine = root / plan_sha[:16]
    if root.is_dir():
        for other in root.iterdir():
            if other == mine:
                continue
            if other.is_dir():
                shutil.rmtree(other)
            else:
                other.unlink()
    mine.mkdir(parents=True, exist_ok=True)
    return mine


def discard(partial: Path) -> None:
    """Remove a plan's working folder after publishing, and the staging folder once no plan is left in it."""
    shutil.rmtree(partial)
    try:
        partial.parent.rmdir()
    except OSError:
        pass


def existing_build(out: Path) -> BuiltDataset | None:
    """The build at ``out``, None when there is nothing there (or an empty folder); raises :class:`BuildError` when
    ``out`` holds anything but a medprep build (see ``manifests.verify.build_problems``): nothing is replaced then."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    problems = build_problems(out) if out.is_dir() else [f"{out.name}: a file, not a folder"]
    if problems:
        shown = "; ".join(str(x) for x in problems[:3]) + (f"; and {len(problems) - 3} more" if problems[3:] else "")
        raise BuildError(f"{out} is not a medprep build ({shown}); nothing was deleted: choose another --out, or "
                         f"move that folder away yourself")
    return BuiltDataset(out)


def existing_remote(out: str) -> BuiltDataset | None:
    """The build published at the object-store URL ``out`` (its ``manifest.json``), None when there is none;
    raises :class:`BuildError` when that manifest is not a medprep manifest."""
    fs, path = fs_and_path(out)
    if not fs.exists(f"{path}/{MANIFEST}"):
        return None
    try:
        return BuiltDataset(out)
    except ValueError as e:
        raise BuildError(f"{e}; nothing was deleted: choose another --out") from None


def build_folder(plan_sha: str, stamps_sha: str) -> str:
    """The build folder of a build published to an object store: named by its plan and where its inputs lay, so a
    rerun resumes in it and a build of other parameters or inputs writes beside it, never into it."""
    return f"b-{sha256_bytes(f'{plan_sha} {stamps_sha}'.encode())[:16]}"


def prune(out: str, current: str, keep: int) -> None:
    """After the manifest at ``out`` names the build folder ``current``: remove its parts, and every other build
    folder but the ``keep - 1`` most recently published ones (by their card; folders of interrupted builds with
    other parameters or inputs have none and go too)."""
    fs, path = fs_and_path(out)
    if fs.exists(f"{path}/{current}/parts"):
        fs.rm(f"{path}/{current}/parts", recursive=True)
    published: list[tuple[Any, str]] = []
    doomed: list[str] = []
    for entry in fs.ls(path, detail=True, refresh=True):
        name = entry["name"].rstrip("/").rpartition("/")[2]
        if entry["type"] != "directory" or name == current or not BUILD_FOLDER.fullmatch(name):
            continue
        try:
            published.append((fs.modified(f"{path}/{name}/{CARD}"), name))
        except FileNotFoundError:
            doomed.append(name)
    published.sort(reverse=True)
    doomed += [name for _, name in published[max(keep - 1, 0):]]
    for name in doomed:
        fs.rm(f"{path}/{name}", recursive=True)
    fs.invalidate_cache(path)


def swap_in(staged: Path, out: Path, partial: Path) -> None:
    """Make the finished ``staged`` folder the build at ``out`` with directory renames: readers see the old build
    or the new one, never a mix (a replaced build is moved aside into ``partial``, deleted with it)."""
    if out.exists():
        os.replace(out, partial / "replaced")
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, out)


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


__all__ = ["PARTIAL", "build_folder", "discard", "existing_build", "existing_remote", "plan_staging", "prune",
           "publish", "staging_dir", "swap_in"]
