"""Split rules: official, the papers' 8:1:1 rule, group-aware 8:1:1, and the authors' split files."""

from __future__ import annotations

import json
import random
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from .tree import natural_key

SPLIT_RULES = ("official", "811", "test", "file")


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
