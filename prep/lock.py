"""One build at a time per output dataset: the lock (:mod:`medprep.manifests.lock`) of a hidden file beside the
dataset folder, ``.<name>.lock`` beside ``<name>/``, held for the whole build."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medprep.manifests.lock import OutputLock, describe

from .params import BuildError

NAME_POLLS = 10  # polls for the name of a holder that has the lock but has not written its name yet


def lock_path(out: Path) -> Path:
    """The lock file of the output dataset folder ``out``: the hidden sibling ``.<name>.lock``."""
    return out.parent / f".{out.name}.lock"


class DatasetLock(OutputLock):
    """``with DatasetLock(out, command, wait):`` holds the lock of the output dataset ``out`` (a folder path); a
    refusal is a :class:`~medprep.prep.params.BuildError` naming the holder."""

    error = BuildError
    activity = "being built by another build"
    alternative = "choose another --out"
    logger = "medprep.build"

    def __init__(self, out: Path, command: Sequence[str] | None = None, wait: float = 0.0):
        super().__init__(lock_path(out), str(out), command, wait)
        self.out = out

    def name_polls(self) -> int:
        return NAME_POLLS


__all__ = ["DatasetLock", "describe", "lock_path"]
