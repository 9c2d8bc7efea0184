"""Several cache workers (one per device) over the shared dask runner, partitioned by zarr shard.

The driver opens the run once; each worker loads its own teacher and source from the same
:class:`~medprep.distill.params.CacheParams` and writes whole zarr shards of its own, so workers never touch the
same objects.
"""

from __future__ import annotations

from typing import Sequence

from medprep.manifests.runner import DaskRunner

from .events import Encoded, OnEvent
from .params import CacheParams
from .pipeline import write_shards
from .store import FeatureStore


def _work(shards: list[int], params: CacheParams, device: str) -> list[int]:
    """On a worker: write ``shards`` of the run ``params`` names (opened by the driver) on ``device``."""
    store = FeatureStore.open(params.out, params.run, mode="r+")
    return write_shards(store, params.teacher(), params.open_source(), params, shards, device)


def write_distributed(store: FeatureStore, params: CacheParams, shards: Sequence[int],
                      on_event: OnEvent | None = None) -> list[int]:
    """Write ``shards`` of the open run ``store`` with one dask worker per device of ``params``; return them.

    The shards are dealt round-robin to the devices, and each device's part is sent to a worker of its own (a
    LocalCluster of one process per device, or the workers of ``params.scheduler``); a part whose worker dies runs
    again on another one. ``on_event`` receives :class:`~medprep.distill.events.Encoded` as each worker's part
    completes.
    """
    devices = params.worker_devices
    parts = [(dev, list(shards[i::len(devices)])) for i, dev in enumerate(devices)]
    parts = [(dev, part) for dev, part in parts if part]
    if not parts:
        return []
    with DaskRunner(workers=len(devices), scheduler=params.scheduler) as runner:
        addresses = runner.worker_addresses()
        if len(addresses) < len(devices):
            raise ValueError(f"dask scheduler {params.scheduler} has {len(addresses)} workers, but {len(devices)} "
                             f"devices were given ({', '.join(devices)}): start one worker per device")
        # pinned loosely: the nanny of a killed worker starts a replacement at another address, so a part pinned
        # strictly to the dead address would wait for it forever (measured: the run never ends). It runs again on
        # a worker that is alive instead; its finished zarr shards are skipped, the others written whole again
        futures = [runner.submit(_work, part, params, dev, workers=[addr], allow_other_workers=True)
                   for (dev, part), addr in zip(parts, addresses)]
        written = []
        for future in futures:
            done = runner.gather([future])[0]
            written += done
            if on_event is not None:
                on_event(Encoded(sum(len(store.indices(s)) for s in done) * len(store.views)))
    return sorted(written)
