"""Builds and caches on a dask cluster without a shared disk, published to an S3-compatible store (moto's server on
loopback): equal to a local run, readable from DataLoader workers, never a mix of two builds, object-store errors in
one line."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

import fsspec  # noqa: E402
import fsspec.config  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from medprep.distill import CacheExecution, CacheParams, cache_teacher  # noqa: E402
from medprep.loaders import MedShards, MedShardsIndexed  # noqa: E402
from medprep.loaders.teacher import SA1BStream, TeacherFeatures, teacher_shards  # noqa: E402
from medprep.manifests import BuiltDataset, verify  # noqa: E402
from medprep.manifests.features import FeatureReader  # noqa: E402
from medprep.prep import build, synthetic  # noqa: E402
from medprep.prep.events import TaskDone  # noqa: E402

CPU = CacheExecution("cpu")

pytestmark = pytest.mark.usefixtures("collect_clients")  # object-store clients (conftest)

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
TINY = "medprep.distill.teachers:random_sam"
HERE = str(Path(__file__).parent)
BUILD = {"size": 64, "shard_samples": 2}


class Cluster:
    """moto's S3 server in this process, a dask scheduler and two dask workers as separate processes, each with a
    temporary folder of its own and its working directory elsewhere: they share nothing but the object store."""

    def __init__(self, root: Path):
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.saved = {k: os.environ.get(k) for k in (*CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL")}
        os.environ.update(CREDENTIALS)
        os.environ["FSSPEC_S3_ENDPOINT_URL"] = self.endpoint  # this process's readers, and spawned DataLoader workers
        self.conf = dict(fsspec.config.conf.get("s3", {}))
        fsspec.config.conf["s3"] = {**self.conf, "endpoint_url": self.endpoint}
        fsspec.get_filesystem_class("s3").clear_instance_cache()
        self.fs = fsspec.filesystem("s3")
        self.fs.mkdir("bkt")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FSSPEC_", "DASK_"))}
        env["DASK_LOGGING__DISTRIBUTED"] = "critical"
        self.procs: list[subprocess.Popen] = []
        sched_file = root / "scheduler.json"
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sched_file)], cwd=root, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        for i in range(2):
            here = root / f"worker{i}"
            here.mkdir()
            # the workers reach the store through the environment (endpoint and credentials), as on a cluster;
            # builds also send their --storage-options with every task
            worker_env = {**env, "FSSPEC_S3_ENDPOINT_URL": self.endpoint, "PYTHONPATH": HERE}  # HERE: slow_teacher
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard", "--local-directory", str(here / "tmp"), "--name", f"w{i}"],
                cwd=here, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from dask.distributed import Client

        deadline = time.monotonic() + 120
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.address = json.loads(sched_file.read_text())["address"]
        self.client = Client(self.address, timeout=60)
        self.client.wait_for_workers(2, timeout=120)

    def worker_pids(self) -> dict[str, int]:
        return self.client.run(os.getpid)

    def close(self) -> None:
        self.client.close()
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.moto.stop()
        fsspec.config.conf["s3"] = self.conf
        fsspec.get_filesystem_class("s3").clear_instance_cache()
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The same inputs built and cached in this process, on the local disk: the reference."""
    root = tmp_path_factory.mktemp("local")
    src = synthetic.make("dsb2018", root / "src", n=12)
    build("dsb2018", src, root / "shards", **BUILD)
    store = str(root / "t.zarr")
    cache_teacher(_params(str(root / "shards" / "dsb2018"), store), execution=CPU)
    return src, root / "shards" / "dsb2018", store


def _params(source: str, out: str, **kw) -> CacheParams:
    kw = {"shard_samples": 3, **kw}
    return CacheParams(TINY, source, out, "r", encoder_kwargs={"img_size": 64}, dtype="float32", batch_size=2, **kw)


def _tars(ds: BuiltDataset) -> list[bytes]:
    fs, _ = fsspec.core.url_to_fs(ds.root)
    return [fs.cat_file(fsspec.core.url_to_fs(u)[1]) for u in ds.shard_urls()]


def _rows(ds: BuiltDataset) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "shard"} | {"shard": r["shard"].rpartition("/")[2]}
            for r in ds.samples()]


def _same_build(a: BuiltDataset, b: BuiltDataset) -> None:
    assert _tars(a) == _tars(b)
    assert _rows(a) == _rows(b)
    assert a.failures() == b.failures()
    ma, mb = a.manifest, b.manifest
    assert [(s.split, s.nsamples, s.bytes, s.sha256) for s in ma.shards] == \
        [(s.split, s.nsamples, s.bytes, s.sha256) for s in mb.shards]
    assert ma.params == mb.params and ma.counts == mb.counts


def test_build_and_cache_on_a_cluster_equal_a_local_run(cluster, local, tmp_path):
    src, ref, ref_store = local
    url = "s3://bkt/cluster"
    build("dsb2018", src, url, scheduler=cluster.address, storage_options={"endpoint_url": cluster.endpoint}, **BUILD)
    ds = BuiltDataset(f"{url}/dsb2018")
    assert ds.manifest.folder.startswith("b-") and all(s.name.startswith(ds.manifest.folder) for s in
                                                        ds.manifest.shards)
    _same_build(ds, BuiltDataset(ref))
    assert verify(ds.root).ok, verify(ds.root).summary()
    assert not cluster.fs.exists(f"bkt/cluster/dsb2018/{ds.manifest.folder}/parts")  # removed once published

    store = "s3://bkt/t.zarr"
    cache_teacher(_params(ds.root, store), execution=CacheExecution("cpu", scheduler=cluster.address))
    got, want = FeatureReader.open(store, "r"), FeatureReader.open(ref_store, "r")
    assert got.keys() == want.keys() and got.done().all()
    assert np.array_equal(got.read(slice(None)), want.read(slice(None)))


def test_readers_in_dataloader_workers(cluster, local, tmp_path):
    """MedShards, TeacherJoin and SA1BStream (one chain) and MedShardsIndexed read s3:// in 2 forked and 2 spawned
    DataLoader workers: every sample once, the features as stored."""
    from medprep.distill.synthetic import write_sa1b_tar

    src = local[0]
    build("dsb2018", src, "s3://bkt/readers", **BUILD)
    ds = BuiltDataset("s3://bkt/readers/dsb2018")
    store = "s3://bkt/readers.zarr"
    cache_teacher(_params(ds.root, store), execution=CPU)
    write_sa1b_tar(tmp_path / "sa_000000.tar", [1, 2, 3, 4], np.random.default_rng(0))
    cluster.fs.put(str(tmp_path / "sa_000000.tar"), "bkt/sa1b/sa_000000.tar")
    sa_store = "s3://bkt/sa.zarr"
    cache_teacher(_params("s3://bkt/sa1b", sa_store), execution=CPU)
    train = ds.keys("train")
    sa_keys = FeatureReader.open(sa_store).keys()
    feats = {**{k: TeacherFeatures(store, "r").get(k) for k in train},
             **{k: TeacherFeatures(sa_store).get(k) for k in sa_keys}}
    for context in ("fork", "spawn"):
        chain = torch.utils.data.ChainDataset([
            MedShards(ds.root, "train", ("image", "key"), shuffle=False),
            teacher_shards(ds.root, store, split="train", fields=("image", "key"), shuffle=False),
            SA1BStream(sa_store, size=32, shuffle=False)])
        loader = torch.utils.data.DataLoader(chain, batch_size=None, num_workers=2, multiprocessing_context=context)
        got = list(loader)
        assert sorted(s["key"] for s in got) == sorted([*train, *train, *sa_keys]), context
        for s in got:
            if "teacher" in s:
                assert np.array_equal(s["teacher"].numpy(), feats[s["key"]]), (context, s["key"])
        indexed = MedShardsIndexed(ds.root, "train", ("image", "key"))
        loader = torch.utils.data.DataLoader(indexed, batch_size=None, num_workers=2, multiprocessing_context=context)
        assert sorted(s["key"] for s in loader) == sorted(train), context


def test_commands_read_a_build_from_its_url(cluster, local, tmp_path):
    """build --out s3://, then verify, info, preview, export and leakage take the URL as they take a folder."""
    from typer.testing import CliRunner

    from medprep.cli import app

    url = "s3://bkt/cli/dsb2018"
    runner = CliRunner()
    steps = [["build", "-d", "dsb2018", "--src", str(local[0]), "--out", "s3://bkt/cli", "--size", "64", "-q",
              "--storage-options", json.dumps({"endpoint_url": cluster.endpoint}), "--keep-generations", "1"],
             ["verify", url], ["info", url], ["preview", url, "--out", str(tmp_path / "p.png"), "--n", "4"],
             ["export", url, "--out", str(tmp_path / "exp"), "--layout", "folder"], ["leakage", url], ["verify", url]]
    for args in steps:
        done = runner.invoke(app, args)
        assert done.exit_code == 0, (args, done.output)
    assert (tmp_path / "p.png").stat().st_size and len(list((tmp_path / "exp").rglob("*.png"))) == 2 * 12
    assert cluster.fs.exists("bkt/cli/dsb2018/leakage.json")


def test_a_reader_never_sees_a_mix_of_two_builds(cluster, local):
    """A reader polls the manifest of an s3:// build while it is rebuilt 20 times with other parameters: every
    manifest it reads names files of one build (sizes, sha256 of the samples list) or files already gone."""
    src = local[0]
    url = "s3://bkt/poll"
    root = f"{url}/dsb2018"
    build("dsb2018", src, url, size=64, shard_samples=2)
    stop = threading.Event()
    seen: dict[int, int] = {}
    mixes: list[str] = []

    def poll() -> None:
        fs, base = fsspec.core.url_to_fs(root)
        while not stop.is_set():
            try:
                ds = BuiltDataset(root)
                samples = fs.cat_file(f"{base}/{ds.manifest.files['samples']}")
                sizes = [fs.size(f"{base}/{s.name}") for s in ds.manifest.shards]
            except FileNotFoundError:
                continue  # a build two generations old was removed under this reader: it reads again
            if (hashlib.sha256(samples).hexdigest() != ds.manifest.files["samples_sha256"]
                    or sizes != [s.bytes for s in ds.manifest.shards]):
                mixes.append(ds.manifest.generation)
            per = ds.manifest.shards[0].nsamples
            seen[per] = seen.get(per, 0) + 1

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i in range(20):
            build("dsb2018", src, url, size=64, shard_samples=3 if i % 2 == 0 else 2, overwrite=True)
    finally:
        stop.set()
        reader.join()
    assert not mixes
    assert seen.get(2) and seen.get(3)  # it read both builds
    assert verify(root).ok
    folders = [p for p in cluster.fs.ls("bkt/poll/dsb2018", refresh=True) if p.rpartition("/")[2].startswith("b-")]
    assert len(folders) == 2  # --keep-generations 2: the new build and the one before


def test_an_interrupted_publish_resumes_from_uploaded_shards(cluster, local):
    src, ref, _ = local
    url = "s3://bkt/resume"
    events = []

    def stop_after_two(event) -> None:
        if isinstance(event, TaskDone):
            events.append(event)
            if len(events) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build("dsb2018", src, url, on_event=stop_after_two, **BUILD)
    assert not cluster.fs.exists("bkt/resume/dsb2018/manifest.json")  # nothing published
    result = build("dsb2018", src, url, **BUILD)
    assert result.skipped_tasks == 2
    _same_build(BuiltDataset(f"{url}/dsb2018"), BuiltDataset(ref))


def test_a_worker_killed_mid_build_changes_nothing(cluster, local):
    """SIGKILL of a worker process while the tasks run: its nanny starts it again, dask runs the lost task again
    (tasks are idempotent), and the outputs equal the local run's."""
    src, ref, _ = local
    url = "s3://bkt/killed"
    killed: list[int] = []

    def kill_one(event) -> None:
        if isinstance(event, TaskDone) and not killed:
            pid = sorted(cluster.worker_pids().values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    build("dsb2018", src, url, scheduler=cluster.address, on_event=kill_one, **BUILD)
    assert killed
    _same_build(BuiltDataset(f"{url}/dsb2018"), BuiltDataset(ref))
    cluster.client.wait_for_workers(2, timeout=120)


@contextmanager
def one_worker_dying_on(needle: str) -> Iterator[str]:
    """A LocalCluster of one worker process whose worker SIGKILLs itself whenever it starts a task whose input shows
    ``needle`` (:class:`worker_killer.DieRunning`), dask giving up after two deaths; yields the scheduler address.
    The worker holds one task at a time (a death counts against every task the worker holds, so an innocent queued
    task could be blamed). An alarm ends a run that would hang instead of failing."""
    import dask
    from dask.distributed import Client, LocalCluster
    from worker_killer import DieRunning

    def give_up(*_) -> None:
        raise TimeoutError("the run neither finished nor failed within 180 s of its worker dying")

    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0,
                          "logging.distributed": "critical"}):
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                          scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as c, Client(c) as client:
            client.register_plugin(DieRunning(needle))
            previous = signal.signal(signal.SIGALRM, give_up)
            signal.alarm(180)
            try:
                yield c.scheduler_address
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)


def test_a_worker_dying_on_every_try_of_one_input_names_it(tmp_path):
    """A shard whose conversion kills its worker process every time (out of memory, a crashing decoder): after
    dask's allowed failures the build stops with an error naming the shard's inputs, and keeps the finished shards."""
    from medprep.prep import BuildError

    src = synthetic.make("dsb2018", tmp_path / "src", n=10)
    case = sorted((tmp_path / "src" / "stage1_train").iterdir())[3].name
    with one_worker_dying_on(case) as address:
        with pytest.raises(BuildError, match="a dask worker died 2 times converting shard") as e:
            build("dsb2018", src, tmp_path / "out", scheduler=address, **BUILD)
    assert case in str(e.value) and "finished shards are kept" in str(e.value)


def test_a_worker_dying_on_every_try_of_a_cache_part_names_it(local, tmp_path):
    """A cache part whose worker dies every time it runs: the run stops with an error naming its zarr shards and
    their samples instead of waiting for a worker forever."""
    from medprep.distill import CacheError

    with one_worker_dying_on("[0, 1") as address:
        with pytest.raises(CacheError, match=r"a dask worker died 2 times writing zarr shards 0, 1, ") as e:
            cache_teacher(_params(str(local[1]), str(tmp_path / "t.zarr")),
                          execution=CacheExecution("cpu", scheduler=address))
    assert FeatureReader.open(str(local[2]), "r").keys()[0] in str(e.value)


def test_object_store_errors_are_one_line(cluster, tmp_path):
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "1", "FSSPEC_S3": json.dumps({"config_kwargs": {
        "retries": {"max_attempts": 1}, "connect_timeout": 2}})}
    cases = {
        "endpoint down": ({"FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:9"}, "s3://bkt/cluster/dsb2018"),
        "no such bucket": ({}, "s3://no-such-bucket/x"),
    }
    for what, (extra, url) in cases.items():
        for command in ("verify", "info"):
            proc = subprocess.run([sys.executable, "-m", "medprep.cli", command, url], env={**env, **extra},
                                  capture_output=True, text=True, timeout=120, cwd=tmp_path)
            lines = proc.stderr.strip().splitlines() + proc.stdout.strip().splitlines()
            assert proc.returncode != 0, (what, command)
            assert "Traceback" not in proc.stderr, (what, command, proc.stderr[-2000:])
            assert any(line.startswith(("error:", "FAIL")) and url in line for line in lines), (what, command, lines)


def test_a_worker_killed_mid_cache_changes_nothing(cluster, local):
    """SIGKILL of a worker while it runs a cache part, once the run's first zarr shard is done (the teacher pauses
    before each batch, so the parts are still running): the part runs again on a worker that is alive, its finished
    shards skipped, and the arrays equal the local run's (the pause changes no feature)."""
    _, _, ref_store = local
    store = "s3://bkt/killed.zarr"
    killed: list[int] = []
    stop = threading.Event()

    def kill_when_a_shard_is_done() -> None:
        while not stop.is_set() and not killed:
            try:
                started = FeatureReader.open(store, "r").done().any()
            except (OSError, KeyError, ValueError):  # the run is not created (complete) yet
                started = False
            busy = [addr for addr, keys in cluster.client.processing().items() if keys] if started else []
            if busy:
                pid = cluster.worker_pids()[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    def give_up(*_) -> None:
        raise TimeoutError("cache-teacher did not finish within 240 s after a worker was killed")

    killer = threading.Thread(target=kill_when_a_shard_is_done, daemon=True)
    killer.start()
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(240)
    try:
        cache_teacher(replace(_params(str(local[1]), store), encoder="slow_teacher:slow_random_sam"),
                      execution=CacheExecution("cpu", scheduler=cluster.address))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        stop.set()
        killer.join(timeout=30)
    assert killed
    got, want = FeatureReader.open(store, "r"), FeatureReader.open(ref_store, "r")
    assert got.keys() == want.keys() and got.done().all()
    assert np.array_equal(got.read(slice(None)), want.read(slice(None)))
    cluster.client.wait_for_workers(2, timeout=120)
