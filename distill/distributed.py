"""Several cache workers (one per GPU) over dask.distributed, partitioned by zarr shard.

The driver creates the run once; each worker builds its own teacher and source from a picklable
:class:`CacheJob` and writes whole zarr shards of its own, so workers never touch the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from .pipeline import CacheResult, cache_teacher, open_run
from .store import FeatureStore
from .sources import Source, SourceSpec, open_source
from .teachers import Teacher, load_teacher


@dataclass(frozen=True)
class CacheJob:
    """Everything one cache run needs, as plain values (sent to workers)."""

    encoder: str
    source: SourceSpec
    out: str
    run: str
    checkpoint: str | None = None
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: str | None = None
    resize: str | None = None
    dtype: str = "float16"
    views: tuple[str, ...] = ("identity",)
    shard_size: int = 16
    batch_size: int = 8
    device: str = "cuda"
    autocast: str = "auto"
    compile: bool = False
    workers: int = 4

    def teacher(self) -> Teacher:
        return load_teacher(self.encoder, self.checkpoint, normalize=self.normalize, resize=self.resize,
                            encoder_kwargs=self.encoder_kwargs)

    def open_source(self) -> Source:
        return open_source(self.source)

    def open(self, teacher: Teacher, source: Source) -> FeatureStore:
        """Create or reopen the run (see :func:`open_run`)."""
        return open_run(teacher, source, self.out, self.run, dtype=self.dtype, views=self.views,
                        shard_size=self.shard_size, device=self.device, autocast=self.autocast,
                        compile=self.compile)

    def execute(self, teacher: Teacher, source: Source, shards: Sequence[int] | None = None,
                progress: bool = False) -> CacheResult:
        """Cache zarr shards ``shards`` (default all) in this process."""
        return cache_teacher(teacher, source, self.out, self.run, dtype=self.dtype, views=self.views,
                             shard_size=self.shard_size, batch_size=self.batch_size, device=self.device,
                             autocast=self.autocast, compile=self.compile, workers=self.workers, shards=shards,
                             progress=progress)


def _work(job: CacheJob, shards: list[int]) -> list[int]:
    return job.execute(job.teacher(), job.open_source(), shards).shards_written


def cache_distributed(job: CacheJob, devices: Sequence[str], scheduler: str | None = None) -> list[int]:
    """Run ``job`` on one dask worker per entry of ``devices`` (e.g. ``cuda:0``, ``cuda:1``); return shards written.

    ``scheduler``: address of a running dask scheduler; default a LocalCluster of ``len(devices)`` processes.
    The unfinished zarr shards are dealt round-robin to the devices.
    """
    from dask.distributed import Client, LocalCluster

    if not devices:
        raise ValueError("cache_distributed needs at least one device, e.g. ['cuda:0', 'cuda:1']")
    store = replace(job, device=devices[0]).open(job.teacher(), job.open_source())
    todo = [s for s, done in enumerate(store.done_shards()) if not done]
    if not todo:
        return []
    parts = [todo[i::len(devices)] for i in range(len(devices))]
    cluster = None if scheduler else LocalCluster(n_workers=len(devices), threads_per_worker=1, processes=True,
                                                  dashboard_address=None)
    try:
        with Client(scheduler or cluster) as client:
            futures = [client.submit(_work, replace(job, device=dev), part, pure=False)
                       for dev, part in zip(devices, parts) if part]
            return sorted(s for written in client.gather(futures) for s in written)
    finally:
        if cluster is not None:
            cluster.close()
