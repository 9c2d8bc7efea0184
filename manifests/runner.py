"""The one dask runner of the project: cluster start, worker environment, task submission, teardown.

API::

    from medprep.manifests.runner import DaskRunner, WORKER_ENV

    with DaskRunner(workers=2, scheduler=None, env=WORKER_ENV) as r:
        for res in r.map(fn, items, p=params):    # fn(item, p=params) on the workers, results as completed
            ...
        fut = r.submit(fn, arg, p=params)          # one call; its input is what WorkerLost names
        r.gather([fut]); r.client                  # results in order; the dask Client for anything else

``scheduler=None`` starts a ``LocalCluster`` of ``workers`` processes with one thread each, no dashboard and the
``env`` dask config applied while the workers spawn (default :data:`WORKER_ENV`); a scheduler address
(``tcp://host:8786``) connects to a running cluster instead and ``workers``/``env`` are ignored; one that does not
answer within ``connect_timeout`` seconds raises ``ConnectionError`` naming it. Leaving the
``with`` block closes the client and the cluster it started (a connected cluster is left running). Extra keywords
go to ``LocalCluster`` (e.g. ``resources={"GPU": 1}``). dask is imported only when a runner starts. Keyword
arguments of :meth:`map`/:meth:`submit` go to ``fn``, so they must not be named like dask's own (``key``,
``workers``, ``resources``, ``retries``, ``priority``...). Tasks are not pinned to workers: the nanny of a killed
worker starts it again at another address, and dask gives a waiting task to a new worker only if its restrictions
allow it (a task pinned to the dead address, even loosely, waits forever on a one-worker cluster: measured).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .errors import MedprepError

# dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's adaptive mmap threshold:
# every multi-megabyte image buffer is then a fresh mmap plus page faults (+25% CPU per image, measured). Keep
# buffers up to 32 MiB on the heap and trim it lazily, as in a normal process.
WORKER_ENV: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 256 << 20,
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 << 20,
}

# A worker process sets up its logging from the environment when it imports distributed, so its log level travels
# as an environment variable: shutdown noise ("Failed to communicate with scheduler during heartbeat" while the
# cluster closes) stays out of the output unless medprep's own logging is on (--verbose).
QUIET_WORKER_ENV = {"distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "critical"}

CONNECT_TIMEOUT_S = 5.0  # a scheduler that does not answer within this is reported, not waited for (dask: 30 s)

# no dashboard, and the scheduler's small HTTP server on a free local port rather than 8787 (which warns whenever
# another cluster holds it)
_QUIET_HTTP = {"dashboard_address": "127.0.0.1:0"}


class WorkerLost(MedprepError, RuntimeError):
    """A task whose worker process died every time it ran it (dask gave up after ``deaths`` deaths): ``item`` is
    the task's input, for the caller to name."""

    def __init__(self, item: Any, deaths: int):
        super().__init__(f"a dask worker died {deaths} times running {item!r}")
        self.item, self.deaths = item, deaths


class DaskRunner:
    """A dask client over a LocalCluster it starts (``scheduler=None``) or over a running scheduler."""

    def __init__(self, workers: int = 1, scheduler: str | None = None, env: Mapping[str, Any] | None = WORKER_ENV,
                 connect_timeout: float = CONNECT_TIMEOUT_S, **cluster_kwargs: Any):
        if scheduler is None and workers < 1:
            raise ValueError(f"DaskRunner: workers must be >= 1 to start a local cluster, got {workers}")
        self.workers, self.scheduler, self.cluster_kwargs = workers, scheduler, cluster_kwargs
        self.connect_timeout = connect_timeout
        self.env = dict(env or {})
        if not logging.getLogger("medprep").isEnabledFor(logging.INFO):
            self.env = {**QUIET_WORKER_ENV, **self.env}
        self._cluster: Any = None
        self._client: Any = None
        self._item_of: dict[Any, Any] = {}  # future key -> the task's input, for WorkerLost

    def __enter__(self) -> DaskRunner:
        import dask
        from dask.distributed import Client, LocalCluster

        try:
            if self.scheduler is None:
                with dask.config.set(self.env):
                    kwargs = dict(self.cluster_kwargs)
                    kwargs["scheduler_kwargs"] = {**_QUIET_HTTP, **kwargs.get("scheduler_kwargs", {})}
                    self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                                 dashboard_address=None, **kwargs)
                self._client = Client(self._cluster)
            else:
                self._client = Client(self.scheduler, timeout=self.connect_timeout)
        except (OSError, ValueError) as e:
            self.close()
            if self.scheduler is None:
                raise
            raise ConnectionError(f"--scheduler {self.scheduler}: no dask scheduler answered ({e}); start one "
                                  f"('dask scheduler') and pass the address it prints, or leave out --scheduler to "
                                  f"run on local workers") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and the cluster this runner started (idempotent)."""
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()

    @property
    def client(self) -> Any:
        """The ``dask.distributed.Client`` (only inside the ``with`` block)."""
        if self._client is None:
            raise RuntimeError("DaskRunner is not started: use it as `with DaskRunner(...) as r:`")
        return self._client

    def worker_addresses(self) -> list[str]:
        """Addresses of the connected workers, sorted."""
        return sorted(self.client.scheduler_info()["workers"])

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Submit one call ``fn(*args, **kwargs)`` (never deduplicated: ``pure=False``); returns its future. Its first
        argument is the task's input :class:`WorkerLost` names."""
        future = self.client.submit(fn, *args, pure=False, **kwargs)
        self._item_of[future.key] = args[0] if args else None
        return future

    def gather(self, futures: Sequence[Any]) -> list[Any]:
        """Results of ``futures`` in their order (raises the first task error; a task whose worker died every time
        it ran it raises :class:`WorkerLost` naming its input)."""
        return [self._result(f) for f in futures]

    def _result(self, future: Any) -> Any:
        from dask.distributed import KilledWorker

        try:
            return future.result()
        except KilledWorker as e:
            raise WorkerLost(self._item_of.get(future.key), e.allowed_failures + 1) from None

    def map(self, fn: Callable[..., Any], items: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
        """``fn(item, **kwargs)`` for every item on the workers; yields results as they complete (a task error is
        raised here; the other tasks are cancelled when the runner closes). A worker that dies running a task is
        replaced and the task runs again (dask); one that dies every time (``distributed.scheduler.allowed-failures``
        + 1 times) raises :class:`WorkerLost` naming the item."""
        from dask.distributed import as_completed

        items = list(items)
        if not items:
            return
        futures = self.client.map(fn, items, pure=False, **kwargs)
        self._item_of.update((fut.key, item) for fut, item in zip(futures, items))
        for fut in as_completed(futures):
            yield self._result(fut)


__all__ = ["QUIET_WORKER_ENV", "WORKER_ENV", "DaskRunner", "WorkerLost"]
