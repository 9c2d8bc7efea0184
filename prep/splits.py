"""Split rules: official, the papers' 8:1:1 rule, group-aware 8:1:1, and the authors' split files."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable

from medprep.manifests import SPLITS

from .datasets import Converter, Failure, Record
from .params import BuildParams, read_split_file
from .tree import natural_key


def ratio_counts(n: int) -> tuple[int, int, int]:
    """The papers' 8:1:1 rule: train = round(0.8 n), valid = (n - train) // 2, test = the rest."""
    train = int(0.8 * n + 0.5)
    valid = (n - train) // 2
    return train, valid, n - train - valid


def _shuffled(ids: Iterable[str], seed: int) -> list[str]:
    order = sorted(set(ids), key=natural_key)
    random.Random(seed).shuffle(order)
    return order


def split_811(ids: Iterable[str], seed: int) -> dict[str, str]:
    """Assign ids to train/valid/test by the 8:1:1 rule over a naturally sorted list shuffled with ``seed``."""
    order = _shuffled(ids, seed)
    ntrain, nvalid, _ = ratio_counts(len(order))
    return {i: "train" if k < ntrain else "valid" if k < ntrain + nvalid else "test" for k, i in enumerate(order)}


def split_groups(groups: dict[str, str], seed: int) -> dict[str, str]:
    """8:1:1 over whole groups (video sequences, patients): ``groups`` maps id -> group; no group spans two splits.

    Groups are shuffled with ``seed`` and filled into train until it reaches its 8:1:1 count, then valid, then
    test, so the counts land as close to 8:1:1 as whole groups allow.
    """
    members: dict[str, list[str]] = {}
    for i, g in groups.items():
        members.setdefault(g, []).append(i)
    ntrain, nvalid, _ = ratio_counts(len(groups))
    out, filled = {}, {"train": 0, "valid": 0}
    for g in _shuffled(members, seed):
        split = "train" if filled["train"] < ntrain else "valid" if filled["valid"] < nvalid else "test"
        filled[split] = filled.get(split, 0) + len(members[g])
        out.update({i: split for i in members[g]})
    return out


def carve_valid(ids: Iterable[str], fraction: float, seed: int) -> set[str]:
    """Ids moved from an official training split to validation (round(fraction * n), seeded)."""
    order = _shuffled(ids, seed)
    return set(order[: int(fraction * len(order) + 0.5)])


def apply_split_file(file_ids: dict[str, str], mapping: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Match records (source id -> id used by the split file) to a split file mapping (id -> split); a record whose
    split-file id is not listed matches by its source id (a hand-made file naming ``000001`` for UDIAT's
    ``ultra_000001``), so no id is reported on both sides.

    Returns (source id -> split) for the matched records and a report with the ids on each side left unmatched.
    """
    assigned, matched = {}, set()
    for sid, fid in file_ids.items():
        key = fid if fid in mapping else sid if sid in mapping else None
        if key is not None:
            assigned[sid] = mapping[key]
            matched.add(key)
    report = {
        "matched": len(assigned),
        "in_file_not_found": sorted((i for i in mapping if i not in matched), key=natural_key),
        "found_not_in_file": sorted((s for s in file_ids if s not in assigned), key=natural_key),
    }
    return assigned, report


def assign_splits(conv: Converter, records: list[Record], p: BuildParams, failures: list[Failure]
                  ) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """source id -> split by ``p``'s rule (default: the converter's), the split report, and the splits the rule or
    the split file defines (those a build must not leave empty); records left without a split (not in the split
    file) are added to ``failures``. A split file that matches none of the records is a ``ValueError``."""
    rule = "file" if p.split_file else (p.split_rule or conv.split_rule)
    ids = [r.source_id for r in records]
    report: dict[str, Any] = {"rule": rule, "seed": p.seed}
    if p.split_file is not None:
        mapping, ignored = read_split_file(p.split_file)
        assigned, rep = apply_split_file({r.source_id: conv.split_file_id(r.source_id) for r in records}, mapping)
        report.update(rep, split_file=Path(p.split_file).name, ignored_keys={k: len(v) for k, v in ignored.items()})
        if records and not assigned:
            looked_up = [conv.split_file_id(r.source_id) for r in records[:3]]
            raise ValueError(f"--split-file {p.split_file} matches none of the {len(records)} inputs: it lists "
                             f"{', '.join(list(mapping)[:3]) or 'no names'}..., the inputs are looked up as "
                             f"{', '.join(looked_up)}...; is it the split file of another dataset?")
        for r in records:
            if r.source_id not in assigned:
                failures.append(Failure(r.source_id, tuple(r.files()),
                                        f"not listed in --split-file {Path(p.split_file).name} "
                                        f"(looked up as {conv.split_file_id(r.source_id)!r})", stage="split"))
        return assigned, report, [x for x in SPLITS if x in mapping.values()]
    if p.group_by:
        groups = {r.source_id: r.group for r in records}
        missing = [i for i, g in groups.items() if g is None]
        if missing:
            raise ValueError(f"--group-by {p.group_by}: no {p.group_by} known for {len(missing)} of {len(ids)} "
                             f"samples (e.g. {', '.join(missing[:3])}); pass --groups-file FILE, a CSV table with "
                             f"a frame column and a {p.group_by} column (e.g. frame_id,{p.group_by}_id), one row "
                             f"per frame")
        report["group_by"] = p.group_by
        return split_groups(groups, p.seed), report, _ratio_splits(len(ids))  # type: ignore[arg-type]
    if rule == "811":
        return split_811(ids, p.seed), report, _ratio_splits(len(ids))
    if rule == "test":
        return {i: "test" for i in ids}, report, ["test"]
    # official
    out = {r.source_id: r.split or "train" for r in records}
    if conv.valid_from_train and not any(s == "valid" for s in out.values()):
        carved = carve_valid([i for i, s in out.items() if s == "train"], conv.valid_from_train, p.seed)
        out.update({i: "valid" for i in carved})
        report["valid_from_train"] = conv.valid_from_train
    return out, report, [x for x in SPLITS if x in out.values()]


def _ratio_splits(n: int) -> list[str]:
    """The splits the 8:1:1 rule gives samples to for ``n`` ids (valid and test stay empty for tiny sets)."""
    return [x for x, count in zip(SPLITS, ratio_counts(n)) if count]
