"""``MedShards``: a torch ``IterableDataset`` over the shards of one or more built datasets."""

from __future__ import annotations

import math
import multiprocessing
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from . import partition
from .augment import Augment
from .fields import recorded_decoder
from .prompts import Prompts
from .reader import Shard, Source, open_sources, roots, split_shards

BALANCE = (None, "modality")


class MedShards(torch.utils.data.IterableDataset):
    """Samples of ``split`` of one or more built datasets, as dicts of tensors (see ``medprep.loaders.fields``).

    Exact mode (default): every sample exactly once per epoch, split among DataLoader workers and distributed ranks
    (``rank``/``world_size`` arguments, else ``torch.distributed`` when initialised, else ``RANK``/``WORLD_SIZE``),
    whatever the numbers of shards, workers and ranks. Ranks may get different numbers of samples.

    Resampled mode (``resampled=True``): shards are drawn at random with replacement and every rank yields exactly
    ``epoch_samples`` samples (default: the split's size divided by the world size, rounded up), so all ranks run
    the same number of batches. Several sources are mixed by ``weights`` (default: their sizes, i.e. uniform over
    samples); ``balance="modality"`` gives every modality the same share, drawn in rounds (one sample of each
    modality per round, in a random order), so a batch size that is a multiple of the number of modalities gives
    exactly balanced batches.

    Order: shards are shuffled by ``(seed, epoch)`` and samples through a ``shuffle_buffer`` of raw samples per
    worker (split among the sources in resampled mode); identical for identical seed, epoch and numbers of workers
    and ranks; ``shuffle=False`` reads the manifest order. Call ``set_epoch`` before each epoch (it reaches
    persistent workers).

    ``fields`` (default ``DEFAULT_FIELDS``), ``normalize`` (default ``sam``) and ``prompts`` left ``None`` follow what
    the sources' builds recorded (``medprep build --preset``: the normalisation, a ``points``/``boxes`` field and its
    box jitter).
    """

    def __init__(
        self,
        sources: Source | Sequence[Source],
        split: str = "train",
        fields: Iterable[str] | None = None,
        *,
        normalize: str | None = None,
        augment: Augment | None = None,
        prompts: Prompts | None = None,
        shuffle: bool = True,
        shuffle_buffer: int = 64,
        seed: int = 0,
        epoch: int = 0,
        resampled: bool = False,
        epoch_samples: int | None = None,
        weights: Sequence[float] | None = None,
        balance: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.datasets = open_sources(sources)
        self.split = split
        self.shards: list[Shard] = split_shards(self.datasets, split)
        self.decoder = recorded_decoder(self.datasets, fields, normalize, augment, prompts)
        self.entries = self.decoder.entries
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer if shuffle else 0, seed
        self.rank, self.world_size = rank, world_size
        partition.distributed_rank(rank, world_size)  # validate early
        self.resampled = resampled
        if balance not in BALANCE:
            raise ValueError(f"balance={balance!r}: expected one of {BALANCE}")
        if not resampled and (weights is not None or balance is not None or epoch_samples is not None):
            raise ValueError("weights, balance and epoch_samples need resampled=True: an exact epoch reads every "
                             "sample once, so its mix is the sources' sizes")
        sizes = [sum(s.nsamples for s in self.shards if s.source == i) for i in range(len(self.datasets))]
        if weights is not None and (len(weights) != len(self.datasets) or min(weights) < 0 or not sum(weights)):
            raise ValueError(f"weights {list(weights)}: expected {len(self.datasets)} non-negative numbers "
                             f"(one per source), not all zero")
        self.weights = [float(w) for w in (weights if weights is not None else sizes)]
        self.balance = balance
        if epoch_samples is not None and epoch_samples < 1:
            raise ValueError(f"epoch_samples={epoch_samples}: expected a positive number of samples per rank")
        self.epoch_samples = epoch_samples
        self._epoch = multiprocessing.RawValue("q", epoch)  # shared with (persistent) DataLoader workers

    def __repr__(self) -> str:
        return (f"MedShards({roots(self.datasets)}, split={self.split!r}, samples={self.nsamples()}, "
                f"shards={len(self.shards)}, fields={self.decoder.fields}, normalize={self.decoder.normalize!r}, "
                f"{'resampled' if self.resampled else 'exact'} epochs)")

    # -- epochs and sizes ---------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (shard order, shuffle and augmentation seeds); seen by persistent workers too."""
        self._epoch.value = int(epoch)

    def nsamples(self) -> int:
        """Samples of the split over all sources."""
        return sum(s.nsamples for s in self.shards)

    def samples_per_rank(self) -> int:
        """Samples one rank yields per epoch in resampled mode."""
        _, world = partition.distributed_rank(self.rank, self.world_size)
        return self.epoch_samples or math.ceil(self.nsamples() / world)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (resampled mode, or a single rank in exact mode)."""
        if self.resampled:
            return self.samples_per_rank()
        _, world = partition.distributed_rank(self.rank, self.world_size)
        if world > 1:
            raise TypeError("an exact epoch gives ranks different numbers of samples; use resampled=True for "
                            "equal per-rank lengths")
        return self.nsamples()

    # -- iteration -----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        consumer = partition.current_consumer(self.rank, self.world_size)
        epoch = self.epoch
        aug_rng = partition.rng(self.seed, epoch, consumer.index, 1)
        raw = self._resampled(consumer, epoch) if self.resampled else self._exact(consumer, epoch)
        for sample in raw:
            yield self.decoder(sample, aug_rng)

    def _exact(self, consumer: partition.Consumer, epoch: int) -> Iterator[dict[str, Any]]:
        order = np.arange(len(self.shards))
        if self.shuffle:
            order = partition.rng(self.seed, epoch).permutation(order)
        parts = partition.assign(len(order), consumer)
        stream = (s for pos, stride, offset in parts
                  for s in self.shards[order[pos]].read(self.entries, stride, offset))
        if self.shuffle_buffer > 1:
            stream = partition.shuffled(stream, self.shuffle_buffer, partition.rng(self.seed, epoch, consumer.index, 2))
        return stream

    def _source_stream(self, source: int, buffer: int, gen: np.random.Generator) -> Iterator[dict[str, Any]]:
        """Endless samples of one source: whole shards drawn with probability proportional to their size, through
        a shuffle buffer of ``buffer`` samples."""
        shards = [s for s in self.shards if s.source == source]
        p = np.array([s.nsamples for s in shards], float)
        p /= p.sum()

        def endless() -> Iterator[dict[str, Any]]:
            while True:
                yield from shards[int(gen.choice(len(shards), p=p))].read(self.entries)

        return partition.shuffled(endless(), buffer, gen) if buffer > 1 else endless()

    def _resampled(self, consumer: partition.Consumer, epoch: int) -> Iterator[dict[str, Any]]:
        gen = partition.rng(self.seed, epoch, consumer.index, 3)
        usable = [i for i, w in enumerate(self.weights) if w > 0]
        buffer = self.shuffle_buffer // len(usable)  # the buffers of all sources together hold shuffle_buffer samples
        streams = {i: self._source_stream(i, buffer, partition.rng(self.seed, epoch, consumer.index, 4, i))
                   for i in usable}
        if self.balance == "modality":
            groups: dict[int, list[int]] = {}
            for i in usable:
                groups.setdefault(self.datasets[i].manifest.modality_id, []).append(i)
            picks = _rounds(list(groups.values()), self.weights, gen)
        else:
            picks = _draws(usable, self.weights, gen)
        for _ in range(partition.quota(self.samples_per_rank(), consumer)):
            yield next(streams[next(picks)])


def _draws(sources: list[int], weights: list[float], gen: np.random.Generator) -> Iterator[int]:
    """Endless source picks with probability proportional to ``weights``."""
    p = np.array([weights[i] for i in sources])
    p /= p.sum()
    while True:
        yield sources[int(gen.choice(len(sources), p=p))]


def _rounds(groups: list[list[int]], weights: list[float], gen: np.random.Generator) -> Iterator[int]:
    """Endless rounds with one pick per group (modality) in random order; within a group, by ``weights``."""
    inner = [_draws(g, weights, gen) for g in groups]
    while True:
        for g in gen.permutation(len(groups)):
            yield next(inner[int(g)])
