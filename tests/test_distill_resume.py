"""Kill the cache process (SIGKILL) at random points, resume, and get the arrays of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import zarr

from medprep.distill import CacheExecution, CacheParams, cache_teacher
from medprep.distill.synthetic import write_image_folder

CPU = CacheExecution("cpu")

TINY = "medprep.distill.teachers:random_sam"
RUN = "r"
OPTS = {"dtype": "int8", "views": ["identity", "hflip"], "shard_samples": 4, "batch_size": 2}


def _cli(source: str, out: str) -> list[str]:
    return [sys.executable, "-m", "medprep.cli", "cache-teacher", "--source", source, "--out", out,
            "--encoder", TINY, "--encoder-arg", "img_size=256", "--device", "cpu", "--run", RUN,
            "--dtype", OPTS["dtype"], "--views", ",".join(OPTS["views"]), "--shard-samples", str(OPTS["shard_samples"]),
            "--batch-size", str(OPTS["batch_size"])]


def _arrays(url: str) -> dict[str, np.ndarray]:
    return {name: a[:] for name, a in zarr.open_group(url, mode="r")[RUN].arrays()}


def _done(url: str) -> int:
    return int(zarr.open_group(url, mode="r")[RUN]["done"][:].sum())


def test_kill_and_resume_gives_identical_arrays(tmp_path):
    source = str(write_image_folder(tmp_path / "imgs", 64, np.random.default_rng(0), size=(96, 128)))
    ref_url = str(tmp_path / "ref.zarr")
    t = time.perf_counter()
    cache_teacher(CacheParams(TINY, source, ref_url, RUN, encoder_kwargs={"img_size": 256}, **OPTS), execution=CPU)
    duration = time.perf_counter() - t  # kill delays scale with it, to land inside the run on any machine
    ref = _arrays(ref_url)
    shard = OPTS["shard_samples"]

    out = str(tmp_path / "killed.zarr")
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    partial_kills = 0
    for _ in range(6):
        proc = subprocess.Popen(_cli(source, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert "zarr shards to write" in proc.stderr.readline()  # imports done, run opened
        before = _done(out)
        while _done(out) == before and proc.poll() is None:  # wait until it streams, then kill at a random point
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.0) * duration / (64 // shard))  # within about one more shard's time
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        got = _arrays(out)
        done = got["done"]
        # nothing half-written is visible: every shard marked done already holds the final values
        for s in range(0, len(done), shard):
            if done[s:s + shard].all():
                for name, arr in ref.items():
                    assert np.array_equal(got[name][s:s + shard], arr[s:s + shard]), (name, s)
        partial_kills += alive and 0 < done.sum() < len(done)
        if partial_kills == 3:
            break
    assert partial_kills == 3, "the kills did not land in the middle of the run"

    res = subprocess.run(_cli(source, out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"of {64 // shard} zarr shards to write" in res.stderr and f" {64 // shard} of" not in res.stderr
    got = _arrays(out)
    assert got.keys() == ref.keys()
    for name in ref:
        assert np.array_equal(got[name], ref[name]), name
