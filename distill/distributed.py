"""Several cache workers (one per device) over the shared dask runner, partitioned by zarr shard.

The driver opens the run once; each worker loads its own teacher and source from the same
:class:`~medprep.distill.params.CacheParams` (and runs as the same :class:`~medprep.distill.params.CacheExecution`)
and writes whole zarr shards of its own, so workers never touch the same objects.
"""

from __future__ import annotations

from typing import Sequence

from medprep.manifests.runner import DaskRunner, WorkerLost

from .events import Encoded, OnEvent
from .params import CacheExecution, CacheParams
from .pipeline import CacheError, write_shards
from .store import FeatureStore


def _work(shards: list[int], params: CacheParams, execution: CacheExecution, device: str) -> list[int]:
    """On a worker: write ``shards`` of the run ``params`` names (opened by the driver) on ``device``."""
    store = FeatureStore.open(params.out, params.run, mode="r+")
    return write_shards(store, params.teacher(), params.open_source(), params, execution, shards, device)


def write_distributed(store: FeatureStore, params: CacheParams, execution: CacheExecution, shards: Sequence[int],
                      on_event: OnEvent | None = None) -> list[int]:
    """Write ``shards`` of the open run ``store`` with one dask worker per device of ``execution``; return them.

    The shards are dealt round-robin to the devices, and each device's part runs as one dask task (on a LocalCluster
    of one process per device, or the workers of ``execution.scheduler``, idle workers taking one part each); a part
    whose worker dies runs again on another one, and one whose worker dies every time raises :class:`CacheError`
    naming its zarr shards and samples. ``on_event`` receives :class:`~medprep.distill.events.Encoded` as each worker's part
    completes.
    """
    devices = execution.worker_devices
    parts = [(dev, list(shards[i::len(devices)])) for i, dev in enumerate(devices)]
    parts = [(dev, part) for dev, part in parts if part]
    if not parts:
        return []
    with DaskRunner(workers=len(devices), scheduler=execution.scheduler) as runner:
        workers = len(runner.worker_addresses())
        if workers < len(devices):
            raise ValueError(f"dask scheduler {execution.scheduler} has {workers} workers, but {len(devices)} "
                             f"devices were given ({', '.join(devices)}): start one worker per device")
        # idle workers take one part each; a part whose worker died runs again on a live one (not pinned: see
        # DaskRunner), its finished zarr shards skipped
        futures = [runner.submit(_work, part, params, execution, dev) for dev, part in parts]
        written = []
        for future in futures:
            try:
                done = runner.gather([future])[0]
            except WorkerLost as e:
                raise CacheError(_lost(store, e)) from None
            written += done
            if on_event is not None:
                on_event(Encoded(sum(len(store.indices(s)) for s in done) * len(store.views)))
    return sorted(written)


def _lost(store: FeatureStore, e: WorkerLost) -> str:
    shards: list[int] = e.item
    keys = store.keys()
    names = [keys[i] for s in shards for i in store.indices(s)]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if names[10:] else "")
    return (f"a dask worker died {e.deaths} times writing zarr shards {', '.join(map(str, shards))} of {store.url} "
            f"(samples {shown}): the teacher or one of these samples kills the process that runs it (out of memory, "
            f"or a crash in the device runtime); give the workers more memory or lower --batch-size; finished "
            f"shards are kept and skipped by the next run")
