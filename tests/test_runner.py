"""The shared dask runner: a real LocalCluster of processes, results as completed, submission, teardown."""

from __future__ import annotations

import os

import pytest
from dask.distributed import Client, LocalCluster

from medprep.manifests.runner import WORKER_ENV, DaskRunner


def where(x: int, add: int = 0) -> tuple[int, int, str | None]:
    return x + add, os.getpid(), os.environ.get("MALLOC_MMAP_THRESHOLD_")


def divide(x: int, by: int) -> int:
    return x // by


def test_map_submit_errors_and_teardown():
    with DaskRunner(workers=2) as r:
        results = sorted(r.map(where, range(6), add=10))
        assert [x for x, _, _ in results] == list(range(10, 16))
        assert {pid for _, pid, _ in results} <= {pid for _, pid, _ in r.client.run(where, 0).values()}
        assert {env for _, _, env in results} == {str(WORKER_ENV[next(k for k in WORKER_ENV if "MMAP" in k)])}
        assert len(r.worker_addresses()) == 2
        submitted = r.gather([r.submit(where, i, add=1) for i in range(3)])
        assert [x for x, _, _ in submitted] == [1, 2, 3]  # in the order submitted, keywords to the function
        assert list(r.map(where, [])) == []
        with pytest.raises(ZeroDivisionError):  # a task's error reaches the caller
            list(r.map(divide, [1], by=0))
        address = r.client.scheduler.address
    with pytest.raises(RuntimeError, match="not started"):
        r.client
    with pytest.raises(OSError):  # the cluster it started is gone
        Client(address, timeout=1)


def test_scheduler_address_leaves_the_cluster_running():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with DaskRunner(scheduler=cluster.scheduler_address) as r:
            assert [x for x, _, _ in r.map(where, [1])] == [1]
        with Client(cluster.scheduler_address, timeout=5) as again:
            assert len(again.scheduler_info()["workers"]) == 1

