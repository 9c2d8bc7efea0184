"""Split rules: official, the papers' 8:1:1 rule, group-aware 8:1:1, and the authors' split files."""

from __future__ import annotations

import json
import random
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from .datasets import Converter, Failure, Record
from .params import BuildParams
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


def read_split_file(path: str | Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Read an authors' split JSON ``{"train": [...], "valid": [...], "test": [...]}``.

    Returns (stem -> split, ignored) where ``ignored`` holds the lists under keys other than train/valid/test
    (the released DSB and TNBC files carry a stray ``"p"`` list), to be reported.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--split-file {path}: cannot read it as JSON ({e})") from None
    if not isinstance(doc, dict) or not any(k in doc for k in ("train", "valid", "test")):
        raise ValueError(f"--split-file {path}: expected {{\"train\": [...], \"valid\": [...], \"test\": [...]}}, "
                         f"found keys {list(doc)[:5] if isinstance(doc, dict) else type(doc).__name__}")
    mapping, ignored = {}, {}
    for split, names in doc.items():
        stems = [PurePosixPath(str(n)).name.rsplit(".", 1)[0] for n in names]
        if split not in ("train", "valid", "test"):
            ignored[split] = stems
            continue
        for s in stems:
            if s in mapping and mapping[s] != split:
                raise ValueError(f"--split-file {path}: {s} is listed in both {mapping[s]} and {split}")
            mapping[s] = split
    return mapping, ignored


def apply_split_file(file_ids: dict[str, str], mapping: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Match records (source id -> id used by the split file) to a split file mapping (id -> split).

    Returns (source id -> split) for the matched records and a report with the ids on each side left unmatched.
    """
    assigned = {sid: mapping[fid] for sid, fid in file_ids.items() if fid in mapping}
    matched = {file_ids[s] for s in assigned}
    report = {
        "matched": len(assigned),
        "in_file_not_found": sorted((i for i in mapping if i not in matched), key=natural_key),
        "found_not_in_file": sorted((s for s in file_ids if s not in assigned), key=natural_key),
    }
    return assigned, report


def assign_splits(conv: Converter, records: list[Record], p: BuildParams, failures: list[Failure]
                  ) -> tuple[dict[str, str], dict[str, Any]]:
    """source id -> split by ``p``'s rule (default: the converter's), and the split report; records left without a
    split (not in the split file) are added to ``failures``."""
    rule = "file" if p.split_file else (p.split_rule or conv.split_rule)
    ids = [r.source_id for r in records]
    report: dict[str, Any] = {"rule": rule, "seed": p.seed}
    if p.split_file is not None:
        mapping, ignored = read_split_file(p.split_file)
        assigned, rep = apply_split_file({r.source_id: conv.split_file_id(r.source_id) for r in records}, mapping)
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
            raise ValueError(f"--group-by {p.group_by}: no {p.group_by} known for {len(missing)} of {len(ids)} "
                             f"samples (e.g. {missing[:3]}); give a frame-to-{p.group_by} table")
        report["group_by"] = p.group_by
        return split_groups(groups, p.seed), report  # type: ignore[arg-type]
    if rule == "811":
        return split_811(ids, p.seed), report
    if rule == "test":
        return {i: "test" for i in ids}, report
    # official
    out = {r.source_id: r.split or "train" for r in records}
    if conv.valid_from_train and not any(s == "valid" for s in out.values()):
        carved = carve_valid([i for i, s in out.items() if s == "train"], conv.valid_from_train, p.seed)
        out.update({i: "valid" for i in carved})
        report["valid_from_train"] = conv.valid_from_train
    return out, report
