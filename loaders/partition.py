"""Who reads what: canonical partitions of an epoch, their split among ranks x DataLoader workers, seeds, shuffling.

An epoch is defined over a fixed number of *canonical partitions* (``PARTITIONS`` by default), independent of the
numbers of ranks and workers: the epoch's sample sequence (shards in their shuffled order, each shard's samples in
tar order) is cut into that many contiguous blocks of near-equal size, and each block is read through its own
shuffle buffer whose order is a pure function of ``(seed, epoch, partition)``. A *consumer* (one DataLoader worker
of one rank; ``world_size * num_workers`` of them) reads a contiguous range of partitions, visited in an order
drawn by ``(seed, epoch)``. So every sample is read by exactly one consumer, and where an epoch stands is one cursor
per partition (samples yielded): a state any other topology can continue (``medprep.loaders.merge_states``).

:func:`resumable` runs one partition's read stream from a cursor: the buffer's order is computed on positions, so
the skipped part is never read, and items still in the buffer at the cursor are fetched one by one by index.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

T = TypeVar("T")
R = TypeVar("R")

#: canonical partitions of an exact epoch by default (at most this many readers, ranks x workers, share an epoch)
PARTITIONS = 256


@dataclass(frozen=True)
class Consumer:
    """One DataLoader worker of one rank."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def distributed_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments when given, else ``torch.distributed`` when initialised, else the
    ``RANK``/``WORLD_SIZE`` environment variables, else ``(0, 1)``."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            env = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            env = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = env[0] if rank is None else rank
        world_size = env[1] if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: expected 0 <= rank < world_size")
    return rank, world_size


def current_consumer(rank: int | None = None, world_size: int | None = None) -> Consumer:
    """The consumer running this code (call it inside ``__iter__``, where the DataLoader worker is known)."""
    r, w = distributed_rank(rank, world_size)
    info = torch.utils.data.get_worker_info()
    return Consumer(r, w, info.id if info else 0, info.num_workers if info else 1)


def share(n: int, part: int, parts: int) -> range:
    """Part ``part`` of ``parts`` near-equal contiguous parts of ``range(n)``."""
    return range(part * n // parts, (part + 1) * n // parts)


def owned(consumer: Consumer, partitions: int) -> range:
    """The canonical partitions ``consumer`` reads (a contiguous range; the ranges of all consumers tile them)."""
    if consumer.count > partitions:
        raise ValueError(f"{consumer.world_size} ranks x {consumer.num_workers} workers = {consumer.count} readers, "
                         f"but the epoch has {partitions} partitions: pass partitions>={consumer.count}")
    return share(partitions, consumer.index, consumer.count)


class Blocks:
    """An epoch's sample sequence (shards in ``order``, samples of each in tar order) cut into ``partitions``
    contiguous blocks of near-equal size."""

    def __init__(self, sizes: Sequence[int], order: Sequence[int], partitions: int):
        self.order = [int(s) for s in order]
        self.sizes = [int(sizes[s]) for s in self.order]
        self.ends = np.cumsum(self.sizes)
        self.partitions = partitions

    def span(self, p: int) -> range:
        """Positions of partition ``p`` in the epoch's sample sequence."""
        return share(int(self.ends[-1]) if len(self.ends) else 0, p, self.partitions)

    def runs(self, p: int) -> list[tuple[int, int, int]]:
        """Partition ``p`` as ``(shard, start, stop)`` runs of consecutive samples of one shard, in order."""
        span = self.span(p)
        if not span:
            return []
        out = []
        i = int(np.searchsorted(self.ends, span.start, side="right"))
        while i < len(self.order) and span.stop > self.ends[i] - self.sizes[i]:
            first = self.ends[i] - self.sizes[i]
            out.append((self.order[i], int(max(span.start, first) - first), int(min(span.stop, self.ends[i]) - first)))
            i += 1
        return out


def visit_order(parts: range, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order in which a consumer reads its partitions ``parts``: drawn by ``(seed, epoch)``, or in order."""
    return [parts[i] for i in rng(seed, epoch, 5, parts.start).permutation(len(parts))] if shuffle else list(parts)


def quota(total: int, consumer: Consumer) -> int:
    """This worker's share of ``total`` samples per rank (shares differ by at most one, same on every rank)."""
    w, n = consumer.worker, consumer.num_workers
    return total // n + (w < total % n)


def rng(*words: int) -> np.random.Generator:
    """A generator seeded from integers (seed, epoch, consumer, stream...), independent for distinct tuples."""
    return np.random.default_rng(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]))


def shuffled(items: Iterable[T], size: int, gen: np.random.Generator) -> Iterator[T]:
    """A shuffle buffer of ``size`` items: yields every item once, in an order drawn from ``gen``."""
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(gen.integers(size))
        buf[j], item = item, buf[j]
        yield item
    gen.shuffle(buf)  # type: ignore[arg-type]
    yield from buf


_END = object()


def resumable(runs: Iterable[R], count: Callable[[R], int], read: Callable[[R, int], Iterator[T]],
              fetch: Callable[[R, int], T], size: int, gen: np.random.Generator | None, skip: int = 0
              ) -> Iterator[tuple[int, T]]:
    """``(position, item)`` of the items of ``runs`` (``count(run)`` items each, positions numbered across runs),
    through a shuffle buffer of ``size`` drawn from ``gen`` (:func:`shuffled`; ``gen`` may be None when ``size`` is
    at most 1: no buffer, no draws), without the first ``skip`` outputs.

    The order is computed on positions, so skipping reads nothing: the items that were pulled into the buffer
    before the resume point and are still in it are fetched one by one (``fetch(run, k)``: item ``k`` of ``run``),
    the rest is read in order from where the pulled part ends (``read(run, k)``: the items of ``run`` from its
    ``k``-th on), and runs consumed before are never opened. Whatever ``skip``, the outputs are those of
    ``skip=0`` after its first ``skip``.
    """
    pulled = 0
    opened: deque[tuple[int, int, R]] = deque()  # (first position, count, run) of the runs pulled from, in order

    def positions() -> Iterator[tuple[int, R, int]]:
        nonlocal pulled
        first = 0
        for run in runs:
            n = count(run)
            opened.append((first, n, run))
            for k in range(n):
                pulled = first + k + 1
                yield first + k, run, k
            first += n

    if size > 1 and gen is None:
        raise ValueError(f"a shuffle buffer of {size} items needs a generator")
    order = shuffled(positions(), size, gen) if size > 1 and gen is not None else positions()
    next(itertools.islice(order, skip, skip), None)  # the first ``skip`` outputs, on positions only
    resume = pulled
    cache: dict[int, T] = {}
    reading: tuple[int, Iterator[T]] | None = None  # (position of the next item, items of the run being read)
    for u, run, k in order:
        if u < resume:  # pulled before the resume point: still in the buffer, fetched alone
            yield u, fetch(run, k)
            continue
        while u not in cache:
            if reading is None:
                first, n, nxt = opened.popleft()
                if first + n <= resume:
                    continue
                skipped = max(resume - first, 0)
                reading = (first + skipped, read(nxt, skipped))
            pos, items = reading
            item = next(items, _END)
            if item is _END:
                reading = None
                continue
            cache[pos] = item  # type: ignore[assignment]
            reading = (pos + 1, items)
        yield u, cache.pop(u)
