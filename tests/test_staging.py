"""The staging and resume protocol (``prep/staging.py``): the files of each state, the transitions between them, and
that a transition from a state it does not start from is refused.

The tasks are real (``run_task`` on a fake UDIAT download); ``write`` stands for ``publish.publish`` (which every
build test runs) with one file, so the tests see what the state machine itself does with the files.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from medprep.manifests import fs_and_path
from medprep.prep import BuildError, synthetic
from medprep.prep.archive import open_tree
from medprep.prep.params import BuildParams
from medprep.prep.plan import Plan, plan
from medprep.prep.staging import LocalStaging, Staging, State, StoreStaging, build_folder, staging_dir
from medprep.prep.task import TaskResult, run_task

PLAN = "ab" * 32  # a plan's sha256


@pytest.fixture
def job(tmp_path):
    src = synthetic.make("udiat", tmp_path / "src", n=6)
    p = BuildParams.of("udiat", size=64, shard_samples=2)
    tree = open_tree(src)
    return p, tree, plan(p.converter(), tree, p)


def run_all(stage: Staging, job) -> dict[str, TaskResult]:
    p, tree, planned = job
    return {t.name: run_task(t, str(tree.root), str(stage.partial), p, planned.root) for t in planned.tasks}


def replan(job) -> Plan:
    p, tree, _ = job
    return plan(p.converter(), tree, p)


def marker(text: str):
    """A ``write`` that puts ``written.txt`` (holding ``text``) into a local target; returns ``text``."""

    def write(target: Path, folder: str) -> str:
        (target / "written.txt").write_text(text)
        return text

    return write


def test_a_local_build_goes_through_the_states_with_their_files(tmp_path, job):
    out = tmp_path / "out" / "udiat"
    other_plan = staging_dir(out) / ("cd" * 8)  # an interrupted build with other parameters
    other_plan.mkdir(parents=True)
    (other_plan / "train-000000.json").write_text("{}")
    stage = LocalStaging(out)
    assert stage.state is State.NONE and stage.published() is None

    stage.open(PLAN, "")
    assert stage.state is State.WORKING and stage.partial == staging_dir(out) / PLAN[:16]
    assert list(staging_dir(out).iterdir()) == [stage.partial]  # the other plan's folder is gone
    results = run_all(stage, job)
    assert sorted(f.name for f in stage.partial.iterdir()) == sorted(
        [f"{name}.json" for name in results] + [pt.file for r in results.values() for pt in r.parts])
    assert stage.resume(job[2]) == results  # the records read back are the results the tasks returned

    first, second = (t.name for t in job[2].tasks[:2])
    part = stage.partial / results[first].parts[0].file
    part.write_bytes(part.read_bytes()[:-512])  # cut short
    touched = Path(job[1].root) / (job[2].root + next(iter(results[second].stamps)))
    os.utime(touched, ns=(time.time_ns(), os.stat(touched).st_mtime_ns + 10**9))  # an input changed since it ran
    assert set(stage.resume(replan(job))) == set(results) - {first, second}

    def broken(target: Path, folder: str) -> str:
        (target / "manifest.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        stage.publish(broken)
    assert stage.state is State.STAGED and (stage.partial / "publish" / "manifest.json").is_file()
    assert not out.exists()

    again = LocalStaging(out)  # the next run of the same plan
    again.open(PLAN, "")
    assert set(again.resume(replan(job))) == set(results) - {first, second}  # the finished parts were kept
    assert again.publish(marker("first")) == "first" and again.state is State.PUBLISHED
    assert [f.name for f in out.iterdir()] == ["written.txt"]  # the interrupted publish's files are not in it
    assert not staging_dir(out).exists()

    later = LocalStaging(out)
    with pytest.raises(BuildError, match=f"{out} is not a medprep build"):  # so nothing would replace it
        later.published()
    later.open(PLAN, "")
    later.publish(marker("second"))
    assert (out / "written.txt").read_text() == "second" and not staging_dir(out).exists()


def test_a_store_build_goes_through_the_states_with_their_files(job):
    url = f"memory://staging-{uuid.uuid4().hex}/udiat"
    fs, root = fs_and_path(url)
    for name in ("1" * 16, "2" * 16):  # two earlier published builds, the second one newer
        fs.pipe(f"{root}/b-{name}/card.json", b"{}")
        time.sleep(0.01)
    fs.pipe(f"{root}/b-{'3' * 16}/parts/train-000000.json", b"{}")  # an interrupted build: no card
    stage = StoreStaging(url, keep_generations=2)
    assert stage.published() is None

    stage.open(PLAN, "ef" * 32)
    assert stage.state is State.WORKING and stage.partial == f"{url}/{build_folder(PLAN, 'ef' * 32)}/parts"
    results = run_all(stage, job)  # parts written locally, uploaded whole
    assert sorted(p.rpartition("/")[2] for p in fs.ls(f"{root}/{stage.folder}/parts", detail=False)) == sorted(
        [f"{name}.json" for name in results] + [pt.file for r in results.values() for pt in r.parts])
    assert stage.resume(job[2]) == results

    def write(target: str, folder: str) -> str:
        assert (target, folder) == (url, stage.folder)
        fs.pipe(f"{root}/{folder}/card.json", b"{}")
        fs.pipe(f"{root}/manifest.json", b"{}")  # last: this publishes it
        return "published"

    assert stage.publish(write) == "published" and stage.state is State.PUBLISHED
    # kept: this build and the newest before it (keep_generations 2); gone: its parts, the older build and the
    # interrupted one
    assert sorted(p.rpartition("/")[2] for p in fs.ls(root, detail=False)) == sorted(
        [f"b-{'2' * 16}", stage.folder, "manifest.json"])
    assert fs.ls(f"{root}/{stage.folder}", detail=False) == [f"/{root.strip('/')}/{stage.folder}/card.json"]


def test_a_transition_from_another_state_is_refused(tmp_path, job):
    stage = LocalStaging(tmp_path / "out" / "udiat")
    with pytest.raises(RuntimeError, match=r"resume of the build at .*: needs state WORKING, it is NONE"):
        stage.resume(job[2])
    with pytest.raises(RuntimeError, match=r"publish of the build at .*: needs state WORKING, it is NONE"):
        stage.publish(marker("x"))
    stage.open(PLAN, "")
    with pytest.raises(RuntimeError, match=r"open of the build at .*: needs state NONE, it is WORKING"):
        stage.open(PLAN, "")
    stage.publish(marker("x"))
    with pytest.raises(RuntimeError, match=r"publish of the build at .*: needs state WORKING, it is PUBLISHED"):
        stage.publish(marker("x"))
