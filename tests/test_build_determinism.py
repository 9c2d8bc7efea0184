"""Byte-identical output whatever the worker count; resumption after a crash or a kill gives the same bytes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import read_built

from medprep.prep import BuildError, build, synthetic
from medprep.prep.events import TaskDone
from medprep.prep.staging import staging_dir


def digest(out: Path) -> dict[str, str]:
    """sha256 of every published file of a build."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    synthetic.make("dsb2018", root / "src", n=14)
    return root / "src"


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "dsb2018"
    build("dsb2018", src, out.parent, size=64, shard_samples=3, workers=1)
    return out


def test_workers_1_and_2_give_identical_bytes(src, reference, tmp_path):
    out = tmp_path / "dsb2018"
    build("dsb2018", src, out.parent, size=64, shard_samples=3, workers=2)
    ref = digest(reference)
    assert len([n for n in ref if n.endswith(".tar")]) == 6  # 10/2/2 samples in shards of 3
    assert digest(out) == ref


def test_rebuild_elsewhere_is_identical_and_rerun_is_a_no_op(src, reference, tmp_path):
    out = tmp_path / "again" / "dsb2018"
    build("dsb2018", src, out.parent, size=64, shard_samples=3)
    assert digest(out) == digest(reference)
    stamp = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    result = build("dsb2018", src, out.parent, size=64, shard_samples=3)
    assert result.reused and {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamp


def test_other_parameters_need_overwrite(src, reference, tmp_path):
    out = tmp_path / "o" / "dsb2018"
    build("dsb2018", src, out.parent, size=64, shard_samples=3)
    with pytest.raises(BuildError, match="--overwrite"):
        build("dsb2018", src, out.parent, size=64, shard_samples=3, seed=1)
    build("dsb2018", src, out.parent, size=64, shard_samples=3, seed=1, overwrite=True)
    assert digest(out) != digest(reference)
    assert len(read_built(out)) == 14


def test_crash_midway_then_resume_gives_identical_bytes(src, reference, tmp_path):
    out = tmp_path / "crash" / "dsb2018"

    done: list[str] = []

    def crash_after_two(event: object) -> None:
        if isinstance(event, TaskDone):
            done.append(event.task)
            if len(done) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build("dsb2018", src, out.parent, size=64, shard_samples=3, on_event=crash_after_two)
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))  # nothing final is visible
    assert len(list(staging_dir(out).glob("*/*.json"))) == 2
    result = build("dsb2018", src, out.parent, size=64, shard_samples=3)
    assert result.skipped_tasks == 2
    assert digest(out) == digest(reference)
    assert not staging_dir(out).exists()


@pytest.mark.parametrize("finished_tasks", [0, 1, 3, 5, 6])
def test_sigkill_at_several_points_then_resume(src, reference, tmp_path, finished_tasks):
    """Really kill a build process at different moments (before any task finished, after 1, 3 or 5 of 6 tasks);
    the resumed build equals the uninterrupted one, and no final name ever holds a partial file: ``out`` is either
    absent or a complete build (6: killed while publishing)."""
    out = tmp_path / "killed" / "dsb2018"
    code = ("import sys; from medprep.prep import build; "
            "build('dsb2018', sys.argv[1], sys.argv[2], size=64, shard_samples=3)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(out.parent)], start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list(staging_dir(out).glob("*/*.json"))) < finished_tasks and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    if finished_tasks == 0:
        while not staging_dir(out).exists() and proc.poll() is None:
            time.sleep(0.005)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if out.exists():  # killed after the swap: what is published is complete
        from medprep.manifests import open_dataset

        assert open_dataset(out).verify() == [] and open_dataset(out).manifest.nsamples() == 14
    build("dsb2018", src, out.parent, size=64, shard_samples=3)
    assert digest(out) == digest(reference)


def test_shard_bytes_is_a_hard_bound(src, tmp_path):
    out = tmp_path / "small" / "dsb2018"
    result = build("dsb2018", src, out.parent, size=64, shard_samples=50, shard_bytes=40_000)
    sizes = [s.bytes for s in result.manifest.shards]
    assert len(sizes) > 3 and max(sizes) <= 40_000
    assert sum(s.nsamples for s in result.manifest.shards) == 14
    assert [s.name for s in result.manifest.shards if s.split == "train"][:2] == ["train-000000.tar", "train-000001.tar"]
    assert len(read_built(out)) == 14


def test_manifest_matches_shards_and_wids_index(reference):
    import json

    from medprep.manifests import open_dataset

    ds = open_dataset(reference)
    assert ds.verify() == []
    for split in ds.manifest.splits():
        wids = json.loads((reference / f"{split}.wids.json").read_text())
        assert wids["__kind__"] == "wids-shard-index-v1"
        assert [s["url"] for s in wids["shardlist"]] == [s.name for s in ds.manifest.shards_of(split)]
        assert sum(s["nsamples"] for s in wids["shardlist"]) == ds.manifest.nsamples(split)
    keys_in_tars = set(read_built(reference))
    assert set(ds.keys()) == keys_in_tars


def test_verify_detects_a_corrupt_shard(src, tmp_path):
    from medprep.manifests import open_dataset

    out = tmp_path / "v" / "dsb2018"
    build("dsb2018", src, out.parent, size=64, shard_samples=3)
    ds = open_dataset(out)
    name = ds.manifest.shards[0].name
    data = bytearray((out / name).read_bytes())
    data[600] ^= 0xFF
    (out / name).write_bytes(bytes(data))
    assert ds.verify() == [f"{name}: sha256 differs from the manifest"]
    (out / name).write_bytes(b"short")
    assert "bytes" in ds.verify()[0]


def test_sample_larger_than_shard_bytes_is_a_failure(src, tmp_path):
    """A sample larger than --shard-bytes fails; when every sample does, nothing is published."""
    with pytest.raises(BuildError, match=r"nothing was converted: all 14 inputs failed:\n  14 x sample dsb2018-\S+ "
                                         r"takes \d+ bytes in a tar, more than --shard-bytes 5000"):
        build("dsb2018", src, tmp_path / "tiny", size=64, shard_bytes=5_000)
    assert not (tmp_path / "tiny" / "dsb2018").exists()


def test_shards_read_back_through_webdataset(reference):
    import webdataset as wds

    from medprep.manifests import open_dataset

    ds = open_dataset(reference)
    keys = [s["__key__"] for s in wds.WebDataset(ds.shard_urls(), shardshuffle=False, empty_check=False)]
    assert keys == ds.keys()


def test_src_at_dataset_folder_or_above_gives_identical_bytes(src, reference, tmp_path):
    """Recorded paths are relative to the dataset's own folder, not to wherever --src pointed."""
    out = tmp_path / "deeper" / "dsb2018"
    build("dsb2018", src / "stage1_train", out.parent, size=64, shard_samples=3)
    assert digest(out) == digest(reference)
    meta = next(iter(read_built(out).values()))["meta.json"]
    assert meta["source"]["image"].count("/") == 2 and not meta["source"]["image"].startswith("stage1_train")


def test_scheduler_address_of_a_running_cluster(src, reference, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        build("dsb2018", src, tmp_path / "sched", size=64, shard_samples=3, scheduler=cluster.scheduler_address)
    assert digest(tmp_path / "sched" / "dsb2018") == digest(reference)


def test_a_failed_rebuild_leaves_the_previous_build_intact(src, reference, tmp_path):
    out = tmp_path / "keep" / "dsb2018"
    build("dsb2018", src, out.parent, size=64, shard_samples=3)
    before = digest(out)
    with pytest.raises(BuildError, match="--strict"):
        build("dsb2018", src, out.parent, size=64, shard_samples=3, shard_bytes=5_000, strict=True, overwrite=True)
    assert digest(out) == before


def test_out_that_is_not_a_build_is_refused(src, tmp_path):
    out = tmp_path / "mine" / "dsb2018"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("my files")
    with pytest.raises(BuildError, match="not a medprep build"):
        build("dsb2018", src, out.parent, size=64)
    assert (out / "notes.txt").exists()
