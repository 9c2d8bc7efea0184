"""``MedShards``: a torch ``IterableDataset`` over the shards of one or more built datasets."""

from __future__ import annotations

import itertools
import math
import multiprocessing
from collections import Counter
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from medprep.manifests import ShardIndex

from . import partition, state
from .augment import Augment
from .fields import recorded_decoder
from .prompts import Prompts
from .reader import Shard, DatasetRef, open_datasets, roots, split_shards

BALANCE = (None, "modality")


class MedShards(state.Resumable, torch.utils.data.IterableDataset):
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

    Order: shards are shuffled by ``(seed, epoch)``; an exact epoch's sample sequence is cut into ``partitions``
    canonical partitions (``medprep.loaders.partition``; at least ranks x workers), each read through its own
    ``shuffle_buffer`` of raw samples, in an order that depends on ``(seed, epoch, partition)`` only; every reader
    (rank x worker) reads a contiguous range of partitions, in an order drawn by ``(seed, epoch)``. Resampled mode
    draws per reader, through a ``shuffle_buffer`` split among the sources. Identical for identical seed, epoch and
    numbers of workers and ranks; ``shuffle=False`` reads the manifest order. Call ``set_epoch`` before each epoch
    (it reaches persistent workers).

    Resume: ``state_dict()`` / ``load_state_dict()`` (also through ``torchdata``'s ``StatefulDataLoader``) continue
    an epoch exactly where it stopped, in the uninterrupted order, without reading the samples already yielded; in
    exact mode ``merge_states`` of every rank's state continues it on any other numbers of ranks and workers.

    ``fields`` (default ``DEFAULT_FIELDS``), ``normalize`` (default ``sam``) and ``prompts`` left ``None`` follow what
    the sources' builds recorded (``medprep build --preset``: the normalisation, a ``points``/``boxes`` field and its
    box jitter).
    """

    def __init__(
        self,
        sources: DatasetRef | Sequence[DatasetRef],
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
        partitions: int = partition.PARTITIONS,
    ):
        super().__init__()
        self.datasets = open_datasets(sources)
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
        if partitions < 1:
            raise ValueError(f"partitions={partitions}: expected a positive number of canonical partitions")
        self.partitions = partitions
        self._epoch = multiprocessing.RawValue("q", epoch)  # shared with (persistent) DataLoader workers
        self._indexes: dict[int, ShardIndex] = {}  # shard offset indexes this process read, kept across epochs

    def __repr__(self) -> str:
        return (f"MedShards({roots(self.datasets)}, split={self.split!r}, samples={self.nsamples()}, "
                f"shards={len(self.shards)}, fields={self.decoder.fields}, normalize={self.decoder.normalize!r}, "
                f"{'resampled' if self.resampled else 'exact'} epochs)")

    # -- epochs and sizes ---------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (shard order, shuffle and augmentation seeds); seen by persistent workers too. A loaded
        state of another epoch is dropped."""
        self._epoch.value = int(epoch)
        self._keep_resume(int(epoch))

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
        progress = self._begin(consumer)
        raw = self._resampled(consumer, epoch, progress) if self.resampled else self._exact(consumer, epoch, progress)
        seeded = self.decoder.augment is not None or bool(self.decoder.prompt_fields)
        for words, sample in raw:  # augmentation and prompt draws: by (seed, epoch, the sample's place in the epoch)
            yield self.decoder(sample, partition.rng(self.seed, epoch, 1, *words) if seeded else None)

    def _exact(self, consumer: partition.Consumer, epoch: int, progress: dict[str, Any]
               ) -> Iterator[tuple[tuple[int, ...], dict[str, Any]]]:
        order = np.arange(len(self.shards))
        if self.shuffle:
            order = partition.rng(self.seed, epoch).permutation(order)
        blocks = partition.Blocks([s.nsamples for s in self.shards], order, self.partitions)
        reader = _Reader(self.shards, self.entries, self._indexes)
        cursors = progress["cursors"]
        for p in partition.visit_order(partition.owned(consumer, self.partitions), self.seed, epoch, self.shuffle):
            runs = blocks.runs(p)
            if not runs:  # an empty partition (more partitions than samples): no generator to seed
                continue
            gen = partition.rng(self.seed, epoch, 2, p) if self.shuffle_buffer > 1 else None
            for u, sample in partition.resumable(runs, _Reader.count, reader.read, reader.fetch, self.shuffle_buffer,
                                                 gen, cursors[p]):
                cursors[p] += 1
                yield (2, p, u), sample

    def _source_stream(self, source: int, buffer: int, gen: np.random.Generator, skip: int
                       ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Endless samples of one source: whole shards drawn with probability proportional to their size, through
        a shuffle buffer of ``buffer`` samples, after its first ``skip``."""
        shards = [k for k, s in enumerate(self.shards) if s.source == source]
        p = np.array([self.shards[k].nsamples for k in shards], float)
        p /= p.sum()

        def endless() -> Iterator[tuple[int, int, int]]:
            while True:
                k = shards[int(gen.choice(len(shards), p=p))]
                yield k, 0, self.shards[k].nsamples

        reader = _Reader(self.shards, self.entries, self._indexes)
        return partition.resumable(endless(), _Reader.count, reader.read, reader.fetch, buffer, gen, skip)

    def _resampled(self, consumer: partition.Consumer, epoch: int, progress: dict[str, Any]
                   ) -> Iterator[tuple[tuple[int, ...], dict[str, Any]]]:
        gen = partition.rng(self.seed, epoch, consumer.index, 3)
        usable = [i for i, w in enumerate(self.weights) if w > 0]
        buffer = self.shuffle_buffer // len(usable)  # the buffers of all sources together hold shuffle_buffer samples
        if self.balance == "modality":
            groups: dict[int, list[int]] = {}
            for i in usable:
                groups.setdefault(self.datasets[i].manifest.modality_id, []).append(i)
            picks = _rounds(list(groups.values()), self.weights, gen)
        else:
            picks = _draws(usable, self.weights, gen)
        quota = partition.quota(self.samples_per_rank(), consumer)
        done = min(progress["yielded"], quota)
        skipped = Counter(itertools.islice(picks, done))  # the picks already served, drawn again (no reads)
        streams = {i: self._source_stream(i, buffer, partition.rng(self.seed, epoch, consumer.index, 4, i), skipped[i])
                   for i in usable}
        for _ in range(quota - done):
            i = next(picks)
            u, sample = next(streams[i])
            progress["yielded"] += 1
            yield (3, consumer.index, i, u), sample

    # -- state (state_dict, load_state_dict: state.Resumable) -------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        """What a state must agree on to be loaded here: the data, the order's parameters, the mode."""
        ident: dict[str, Any] = {
            "kind": "MedShards", "version": state.VERSION, "shards": state.fingerprint(
                [f"{s.dataset.name}/{s.entry.name}:{s.nsamples}" for s in self.shards]),
            "samples": self.nsamples(), "seed": self.seed, "shuffle": self.shuffle,
            "shuffle_buffer": self.shuffle_buffer, "mode": "resampled" if self.resampled else "exact"}
        if self.resampled:
            ident.update(epoch_samples=self.samples_per_rank(), weights=self.weights, balance=self.balance)
        else:
            ident["partitions"] = self.partitions
        return ident


class _Reader:
    """Reads ``(shard, start, stop)`` runs of ``shards``: a long run by streaming the shard's tar from ``start``, a
    short one (small partitions) and single samples by ranged reads through the shard's index (its tar headers,
    read once per process and kept in ``indexes``, shared by the readers of one ``MedShards``, for the last
    ``INDEXES`` shards used; every ranged read still checks the dataset's generation and the bytes it got)."""

    STREAM = 16  # runs of at least this many samples are streamed
    INDEXES = 64  # offset indexes kept (those used last)

    def __init__(self, shards: list[Shard], entries: set[str], indexes: dict[int, ShardIndex]):
        self.shards, self.entries, self.indexes = shards, entries, indexes

    @staticmethod
    def count(run: tuple[int, int, int]) -> int:
        return run[2] - run[1]

    def read(self, run: tuple[int, int, int], k: int) -> Iterator[dict[str, Any]]:
        shard, start, stop = run
        if stop - start - k >= self.STREAM:
            return self.shards[shard].read(self.entries, start + k, stop)
        return (self.fetch(run, j) for j in range(k, stop - start))

    def fetch(self, run: tuple[int, int, int], k: int) -> dict[str, Any]:
        shard, start, _ = run
        index = self.indexes.pop(shard, None)
        if index is None:
            index = self.shards[shard].index()
        self.indexes[shard] = index  # (re)inserted last: the dict's order is the order of use
        while len(self.indexes) > self.INDEXES:
            del self.indexes[next(iter(self.indexes))]
        return self.shards[shard].fetch(index, start + k, self.entries)


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
