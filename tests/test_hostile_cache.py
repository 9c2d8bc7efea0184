"""One writer per teacher store run, and cache-teacher inputs that cannot hang or be misnamed: a second writer is
refused naming the holder (or waits with --wait); processes racing to create one run with different teachers leave
one whole run; a store inside a built dataset is refused; a FIFO in a folder source is refused unopened; a bad SA-1B
member is named with its tar."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from medprep.cli import app
from medprep.distill import CacheExecution
from medprep.distill.cache import RunLock
from medprep.distill.sources import FolderSource, SA1BSource
from medprep.distill.synthetic import write_image_folder, write_sa1b_tar
from medprep.manifests import tar_bytes
from medprep.manifests.features import FeatureReader
from medprep.manifests.lock import LockBusy

CPU = CacheExecution("cpu")

TINY = ["--encoder", "random-sam", "--encoder-arg", "img_size=64", "--device", "cpu", "--shard-samples", "2",
        "--batch-size", "2", "-q"]


@pytest.fixture()
def folder(tmp_path):
    return write_image_folder(tmp_path / "imgs", 4, np.random.default_rng(0), size=(32, 32))


def _hold(store, run: str) -> subprocess.Popen:
    """A separate process holding the lock of ``run`` of ``store`` until its stdin is closed."""
    code = ("import sys; from medprep.distill.cache import RunLock\n"
            "with RunLock(sys.argv[1], sys.argv[2]):\n"
            "    print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(store), run], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_of_a_run_is_refused_naming_the_holder_or_waits(tmp_path, folder):
    store = tmp_path / "t.zarr"
    args = ["cache-teacher", "--source", str(folder), "--out", str(store), "--run", "r", *TINY]
    holder = _hold(store, "r")
    try:
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert f"run 'r' of {store} is being written by another cache-teacher: pid {holder.pid} on host " \
               f"{socket.gethostname()}" in res.output and "--wait SECONDS" in res.output
        assert os.listdir(store) == [".r.lock"]  # the refused writer wrote nothing
        release = threading.Timer(2.0, holder.stdin.close)
        release.start()
        res = CliRunner().invoke(app, args + ["--wait", "60"])  # waits for the holder, then caches
        release.join()
        assert res.exit_code == 0, res.output
    finally:
        holder.kill()
        holder.wait()
    assert FeatureReader.open(str(store), "r").done().all()
    assert not (store / ".r.lock").exists()
    with RunLock(str(store), "r"), pytest.raises(LockBusy, match="another cache-teacher"):
        RunLock(str(store), "r").__enter__()


RACER = """\
import sys, time
from medprep.distill import CacheExecution, CacheParams, cache_teacher
folder, store, seed, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
params = CacheParams("random-sam", folder, store, "r", encoder_kwargs={"img_size": 64, "seed": seed},
                     shard_samples=2, batch_size=2)
time.sleep(max(0.0, start - time.time()))
try:
    cache_teacher(params, execution=CacheExecution("cpu", wait=120))
except ValueError as e:
    print("REFUSED", e)
    sys.exit(3)
print("CACHED")
"""


def test_processes_racing_to_create_one_run_with_different_teachers_leave_one_whole_run(tmp_path, folder):
    """Two real processes start at the same moment with teachers seed 0 and 1. Whoever creates the run first, the
    run ends complete with every array, written by one teacher; the process with the other teacher is refused."""
    store = tmp_path / "t.zarr"
    start = time.time() + 4  # after the interpreters have imported torch
    seeds = [0, 1]
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(folder), str(store), str(s), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in seeds]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 3} and 0 in codes, outs
    reader = FeatureReader.open(str(store), "r")
    winner = reader.attrs["encoder_kwargs"]["seed"]
    assert [c == 0 for c in codes] == [s == winner for s in seeds], (codes, outs)
    assert all("other parameters" in out for (out, _), c in zip(outs, codes) if c == 3), outs
    assert reader.done().all() and np.isfinite(reader.read(slice(None))).all()


def test_a_store_inside_a_built_dataset_is_refused(tmp_path, folder):
    built = tmp_path / "shards" / "drive"
    built.mkdir(parents=True)
    (built / "manifest.json").write_text("{}")
    for out in (built / "teacher.zarr", built, built / "sub" / "t.zarr"):
        res = CliRunner().invoke(app, ["cache-teacher", "--source", str(folder), "--out", str(out), *TINY])
        assert res.exit_code == 2 and f"is inside the built dataset {built}" in res.output, res.output
    assert sorted(p.name for p in built.iterdir()) == ["manifest.json"]  # nothing written into the build


def test_a_fifo_in_a_folder_source_is_refused_unopened(tmp_path, folder):
    os.mkfifo(folder / "img_999.png")
    result: list = []
    reader = threading.Thread(target=lambda: result.append(_error(lambda: FolderSource(str(folder)))), daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "opening a folder source with a FIFO hangs"
    assert isinstance(result[0], ValueError) and "img_999.png" in str(result[0]) and "FIFO" in str(result[0])


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return e
    return None


def test_a_bad_sa1b_member_is_named_with_its_tar(tmp_path):
    good = write_sa1b_tar(tmp_path / "x" / "sa_000000.tar", [1, 2], np.random.default_rng(0))
    bad = tmp_path / "sa1b" / "sa_000001.tar"
    bad.parent.mkdir()
    bad.write_bytes(tar_bytes({"sa_7.jpg": b"\xff\xd8 not really a jpeg", "sa_7.json": b"{}"}))
    src = SA1BSource([str(good), str(bad)])
    assert src.load(0)[0].shape == (48, 64, 3)
    with pytest.raises(ValueError, match=rf"SA-1B tar {bad}, member sa_7.jpg is not a decodable image \(20 bytes: "
                                         r"cannot identify image file\)") as e:
        src.load(src.keys.index("sa1b-sa_7"))
    assert "BytesIO" not in str(e.value)


def test_sa1b_stream_names_the_tar_and_member_of_an_image_damaged_since_caching(tmp_path):
    from medprep.distill import CacheParams, cache_teacher
    from medprep.loaders.teacher import SA1BStream

    tar = write_sa1b_tar(tmp_path / "sa1b" / "sa_000000.tar", [1, 2], np.random.default_rng(0))
    cache_teacher(CacheParams("random-sam", str(tar), tmp_path / "t.zarr", "sa", encoder_kwargs={"img_size": 64},
                              shard_samples=2, batch_size=2), execution=CPU)
    members = {"sa_1.jpg": b"\xff\xd8 damaged", "sa_2.jpg": b"\xff\xd8 damaged", "sa_1.json": b"{}",
               "sa_2.json": b"{}"}
    tar.write_bytes(tar_bytes(members))
    with pytest.raises(ValueError, match=rf"SA-1B tar {tar}, member sa_\d.jpg is not a decodable image "
                                         r"\(cannot identify image file\)"):
        next(iter(SA1BStream(str(tmp_path / "t.zarr"), size=64, shuffle=False)))


def _tar_with_a_bad_member(tmp_path):
    """sa_000000.tar with sa_1 ... sa_4, sa_3.jpg not an image."""
    good = write_sa1b_tar(tmp_path / "x" / "sa_000000.tar", [1, 2, 3, 4], np.random.default_rng(0))
    from medprep.manifests import MemberIndex

    index = MemberIndex(str(good))
    members = {m: index.read(m) for m in index.members}
    members["sa_3.jpg"] = b"\xff\xd8 cut"
    tar = tmp_path / "sa1b" / "sa_000000.tar"
    tar.parent.mkdir()
    tar.write_bytes(tar_bytes(members))
    return tar


def test_max_failures_skips_and_lists_bad_members(tmp_path):
    """int8 with both views: the skipped sample's features, scales and valid regions are all left unwritten."""
    tar = _tar_with_a_bad_member(tmp_path)
    store = tmp_path / "t.zarr"
    args = ["cache-teacher", "--source", str(tar), "--out", str(store), "--run", "sa", "--dtype", "int8",
            "--views", "identity,hflip", *TINY]
    res = CliRunner().invoke(app, args)  # by default one bad member stops the run, named
    assert res.exit_code == 2 and f"SA-1B tar {tar}, member sa_3.jpg is not a decodable image" in res.output, \
        res.output
    res = CliRunner().invoke(app, args + ["--max-failures", "1"])
    assert res.exit_code == 0, res.output
    assert "1 images could not be read and were skipped" in res.output
    assert f"sa1b-sa_3: cannot read sample 'sa1b-sa_3' (ValueError: SA-1B tar {tar}, member sa_3.jpg" in res.output
    reader = FeatureReader.open(str(store), "sa")
    assert reader.done().tolist() == [True, True, False, True] and reader.done_shards() == [True, False]
    for view in ("", "_hflip"):
        assert (reader.array(f"features{view}")[2] == -128).all() and np.isnan(reader.array(f"scale{view}")[2]).all()
    assert reader.array("valid_hw")[2].tolist() == reader.array("valid_x_hflip")[2].tolist() == [-1, -1]
    assert np.isfinite(reader.read(3, "hflip")).all() and reader.valid_mask(3, "hflip").any()
    with pytest.raises(ValueError, match=r"'sa1b-sa_3' .* is not cached yet"):
        reader.read(2)
    assert reader.problems(slice(None)) == [(2, "is not cached yet")]
    res = CliRunner().invoke(app, args + ["--max-failures", "1"])  # a rerun tries it again, lists it again
    assert res.exit_code == 0 and "sa1b-sa_3: cannot read" in res.output, res.output
    res = CliRunner().invoke(app, ["check-teacher", str(store), "--run", "sa", "--samples", "2"])
    assert res.exit_code == 0 and "damaged" not in res.output, res.output  # a skipped sample is not damage
    from medprep.loaders.teacher import SA1BStream

    stream = SA1BStream(str(store), size=64, shuffle=False)  # the images that were cached, the skipped one left out
    assert [s["key"] for s in stream] == ["sa1b-sa_1", "sa1b-sa_2", "sa1b-sa_4"]
