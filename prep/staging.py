"""Where a build works until it is published, and how it is published: the staging and resume protocol.

A build of a dataset ``out`` moves through four states. Each state is a set of files, so a build stopped in any of
them (killed, interrupted, refused) leaves what the next run of the same plan resumes from:

=========== ============================================================ ===========================================
state       local ``--out`` (``out`` = ``<parent>/<name>``)                 object store (``out`` = ``<url>/<name>``)
=========== ============================================================ ===========================================
NONE        nothing of this plan (``out`` may hold an earlier build)         the same
WORKING     the plan's working folder ``<parent>/.<name>.partial/<plan>/``   ``<out>/b-<hex>/parts/``: the same files
            (:func:`staging_dir`): per finished task its parts
            ``<task>.partNN.tar`` and, written after them, its record
            ``<task>.json`` (``task.py``); parts without a record are an
            unfinished task's
STAGED      ``<plan>/publish/``: the build's files (shards hard-linked from  ``<out>/b-<hex>/``: the shards (copied from
            the parts, samples, failures, indexes, card, recipe), the        the parts), samples, failures, indexes,
            manifest last                                                    card, recipe
PUBLISHED   ``out`` is the staged folder; the build it replaced and the      ``<out>/manifest.json`` names ``b-<hex>``
            working folder are gone (and ``.<name>.partial`` once empty)     (one PUT); its ``parts/`` and all but the
                                                                             ``keep_generations`` newest build folders
                                                                             are gone
=========== ============================================================ ===========================================

Transitions (:class:`Staging`, whose ``state`` is this run's; the driver holds the dataset's lock, locally, through
all of them):

- :meth:`~Staging.published`, in any state: the build at ``out``, for the up-to-date check; a build with the same
  plan and inputs is kept as it is (:meth:`~Staging.keep`).
- :meth:`~Staging.open`, NONE -> WORKING: the working folder of the plan, named by the plan (and, in an object
  store, where its inputs lay), so a rerun resumes in it (it may hold the files of an earlier run stopped in
  WORKING or STAGED) and a build of other parameters never shares it; locally the working folders of other plans
  (interrupted builds with other parameters or inputs) are removed.
- :meth:`~Staging.resume`, in WORKING: the tasks that need not run again, those with a record, all their parts of
  the recorded sizes and unchanged input files (``task.load_done``); the other tasks run and write theirs. A build
  that is not accepted stays WORKING: its finished parts wait for the next run.
- :meth:`~Staging.publish`, WORKING -> STAGED -> PUBLISHED: a staged folder left by an interrupted publish is
  redone from the parts; the new build's files are written (``publish.py``, the manifest last); locally the staged
  folder then replaces ``out`` by directory renames (readers see the old build or the new one, never a mix) and the
  working folder is removed; in an object store the manifest's PUT publishes it and the build folders no reader
  needs are removed.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from medprep.manifests import MANIFEST, Manifest, fs_and_path, join, sha256_bytes
from medprep.manifests.card import CARD
from medprep.manifests.dataset import BuiltDataset
from medprep.manifests.schema import BUILD_FOLDER
from medprep.manifests.verify import build_problems

from .params import BuildError
from .plan import Plan
from .task import TaskResult, load_done

PARTIAL = ".partial"
#: ``write(target, folder)``: write a build's files into the folder ``target`` (in its build ``folder`` there, when
#: not empty), the manifest last; returns the manifest (``publish.publish``)
Write = Callable[[Path | str, str], Manifest]


class State(Enum):
    """The states of a build (the module's table)."""

    NONE = "none"
    WORKING = "working"
    STAGED = "staged"
    PUBLISHED = "published"


class Staging(ABC):
    """The state of one build of the dataset ``out`` (see the module's table) and the transitions between states.
    A transition called in a state it does not start from is a ``RuntimeError`` (a bug in the driver)."""

    out: Any
    partial: Any  # the working folder (or URL) the tasks write their parts and records in, from :meth:`open` on

    def __init__(self) -> None:
        self.state = State.NONE

    @abstractmethod
    def published(self) -> BuiltDataset | None:
        """The build at ``out``, None when there is none; raises :class:`BuildError` when ``out`` holds something
        else (nothing is replaced then)."""

    def keep(self, old: BuiltDataset) -> None:
        """``old``, the build at ``out``, is up to date: nothing is written."""

    @abstractmethod
    def open(self, plan_sha: str, stamps_sha: str) -> None:
        """NONE -> WORKING: the working folder (:attr:`partial`) of the plan ``plan_sha``, its inputs' stamps having
        the digest ``stamps_sha``."""

    def resume(self, planned: Plan) -> dict[str, TaskResult]:
        """In WORKING: the results of the tasks an earlier run of this plan finished, by task name."""
        self._expect(State.WORKING, "resume")
        return {t.name: r for t in planned.tasks if (r := load_done(self.partial, t, planned.stamps)) is not None}

    @abstractmethod
    def publish(self, write: Write) -> Manifest:
        """WORKING -> STAGED -> PUBLISHED: the build's files written by ``write`` and made the build at ``out``."""

    def _expect(self, state: State, step: str) -> None:
        if self.state is not state:
            raise RuntimeError(f"{step} of the build at {self.out}: needs state {state.name}, it is {self.state.name}")


class LocalStaging(Staging):
    """A build in a local folder: works in ``.<name>.partial/<plan>/`` beside it, published by directory renames."""

    out: Path
    partial: Path

    def __init__(self, out: Path):
        super().__init__()
        self.out = out

    def published(self) -> BuiltDataset | None:
        out = self.out
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            return None
        problems = build_problems(out) if out.is_dir() else [f"{out.name}: a file, not a folder"]
        if problems:
            more = f"; and {len(problems) - 3} more" if problems[3:] else ""
            shown = "; ".join(str(x) for x in problems[:3]) + more
            raise BuildError(f"{out} is not a medprep build ({shown}); nothing was deleted: choose another --out, "
                             f"or move that folder away yourself")
        return BuiltDataset(out)

    def open(self, plan_sha: str, stamps_sha: str) -> None:
        """The working folder is named by the plan alone: the stamps are checked per task when it resumes."""
        self._expect(State.NONE, "open")
        root = staging_dir(self.out)
        self.partial = root / plan_sha[:16]
        if root.is_dir():
            for other in root.iterdir():  # interrupted builds of other plans: the caller's lock says none is running
                if other == self.partial:
                    continue
                if other.is_dir():
                    shutil.rmtree(other)
                else:
                    other.unlink()
        self.partial.mkdir(parents=True, exist_ok=True)
        self.state = State.WORKING

    def publish(self, write: Write) -> Manifest:
        self._expect(State.WORKING, "publish")
        staged = self.partial / "publish"
        if staged.exists():
            shutil.rmtree(staged)  # an earlier publish was interrupted: redone from the kept parts
        staged.mkdir()
        self.state = State.STAGED
        manifest = write(staged, "")
        if self.out.exists():
            os.replace(self.out, self.partial / "replaced")  # deleted with the working folder
        self.out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, self.out)
        shutil.rmtree(self.partial)
        try:
            self.partial.parent.rmdir()  # the staging folder, once no plan is left in it
        except OSError:
            pass
        self.state = State.PUBLISHED
        return manifest


class StoreStaging(Staging):
    """A build at an object-store URL: works in a build folder ``<out>/b-<hex>/`` of its own, published by writing
    the manifest last; earlier build folders are removed after that, the ``keep_generations`` newest (this one
    included) kept for readers still reading them."""

    out: str
    partial: str

    def __init__(self, out: str, keep_generations: int):
        super().__init__()
        self.out = out
        self.keep_generations = keep_generations
        self.folder = ""

    def published(self) -> BuiltDataset | None:
        fs, path = fs_and_path(self.out)
        if not fs.exists(f"{path}/{MANIFEST}"):
            return None
        try:
            return BuiltDataset(self.out)
        except ValueError as e:
            raise BuildError(f"{e}; nothing was deleted: choose another --out") from None

    def keep(self, old: BuiltDataset) -> None:
        """An earlier run may have stopped after its manifest, before removing what no reader needs: removed."""
        self._prune(old.manifest.folder)

    def open(self, plan_sha: str, stamps_sha: str) -> None:
        """The build folder is named by the plan and where its inputs lay (``b-<hex>``)."""
        self._expect(State.NONE, "open")
        self.folder = build_folder(plan_sha, stamps_sha)
        self.partial = join(self.out, self.folder, "parts")
        self.state = State.WORKING

    def publish(self, write: Write) -> Manifest:
        self._expect(State.WORKING, "publish")
        self.state = State.STAGED
        manifest = write(self.out, self.folder)  # its manifest's PUT publishes it
        self.state = State.PUBLISHED
        self._prune(self.folder)
        return manifest

    def _prune(self, current: str) -> None:
        """After the manifest at ``out`` names the build folder ``current``: remove its parts, and every other build
        folder but the ``keep_generations - 1`` most recently published ones (by their card; folders of interrupted
        builds with other parameters or inputs have none and go too)."""
        fs, path = fs_and_path(self.out)
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
        doomed += [name for _, name in published[max(self.keep_generations - 1, 0):]]
        for name in doomed:
            fs.rm(f"{path}/{name}", recursive=True)
        fs.invalidate_cache(path)


def staging_dir(out: Path) -> Path:
    """Where builds of the local dataset folder ``out`` work until they are published: a hidden sibling
    ``.<name>.partial``, one folder per plan in it."""
    return out.parent / f".{out.name}{PARTIAL}"


def build_folder(plan_sha: str, stamps_sha: str) -> str:
    """The build folder of a build published to an object store: named by its plan and where its inputs lay, so a
    rerun resumes in it and a build of other parameters or inputs writes beside it, never into it."""
    return f"b-{sha256_bytes(f'{plan_sha} {stamps_sha}'.encode())[:16]}"


__all__ = ["PARTIAL", "LocalStaging", "State", "Staging", "StoreStaging", "build_folder", "staging_dir"]
