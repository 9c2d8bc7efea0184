"""What a build read, so that a rerun can tell whether its inputs changed.

Planning stamps every file the tasks will read (size and mtime: one stat each, ``Plan.stamps``); a task hashes what
it reads (sha256, as in ``samples.jsonl``). A published build records the digest of the contents in its manifest
(``params.inputs_sha256``: the same for the same inputs, wherever they lie) and the digest of the stamps in its
``card.json`` (``input_stamps``: where the inputs lay when it was built). A rerun with the same plan compares the
stamps first and, only when they differ, the contents: a touched or copied download is still up to date, an edited
one is rebuilt. A resumed build redoes the tasks whose files' stamps changed since they ran (``task.load_done``).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from medprep.manifests import BuiltDataset, dumps, sha256_bytes
from medprep.manifests.card import CARD
from medprep.manifests.fsio import read_bytes

from .plan import Plan
from .task import TaskResult
from .tree import SourceTree

STAMPS = "input_stamps"  # the card.json field


def digest(table: Mapping[str, Any]) -> str:
    """sha256 of a path -> value table (canonical JSON)."""
    return sha256_bytes(dumps(dict(table)))


def contents_sha256(results: list[TaskResult]) -> str:
    """The digest of what the tasks read: sha256 per file (None for a file that could not be read)."""
    hashes: dict[str, str | None] = {}
    for res in results:
        hashes.update(res.inputs)
    return digest(hashes)


def stamps_record(planned: Plan) -> dict[str, Any]:
    """The card's record of where the inputs lay: how many files, and the digest of their stamps."""
    return {"files": len(planned.stamps), "sha256": digest(planned.stamps)}


def unchanged(old: BuiltDataset, planned: Plan, tree: SourceTree) -> bool:
    """Whether the inputs of ``planned`` are those the build ``old`` read (its manifest's ``inputs_sha256``): the
    same stamps as its card records, or else the same contents (every file hashed again)."""
    contents = old.manifest.params.get("inputs_sha256")
    if not contents:
        return False
    try:
        card = json.loads(read_bytes(old.file_url(CARD)))
    except (OSError, ValueError):
        card = None
    recorded = card.get(STAMPS) if isinstance(card, dict) else None
    if isinstance(recorded, dict) and recorded.get("sha256") == digest(planned.stamps):
        return True
    return contents == digest({rel: content_sha256(tree, planned.root + rel) for rel in planned.stamps})


def content_sha256(tree: SourceTree, path: str) -> str | None:
    """sha256 of a file of ``tree``, None if it cannot be read (as a task records it)."""
    try:
        return sha256_bytes(tree.read(path))
    except (OSError, ValueError):  # ValueError: a damaged archive member (ArchiveError)
        return None


__all__ = ["STAMPS", "content_sha256", "contents_sha256", "digest", "stamps_record", "unchanged"]
