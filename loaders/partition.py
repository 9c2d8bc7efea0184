"""Who reads what: splitting shards (or the samples of a shard) among ranks x DataLoader workers, seeds, shuffling.

A *consumer* is one DataLoader worker of one rank; there are ``world_size * num_workers`` of them. In an exact
epoch every consumer gets a disjoint part of the (shuffled) shard list:

* at least as many shards as consumers: shard ``i`` goes to consumer ``i % consumers`` and is read whole;
* fewer shards than consumers: the consumers ``c`` with ``c % shards == i`` share shard ``i``, each keeping the
  samples whose index in the shard is ``c // shards`` modulo the number of sharers.

Either way every sample is read by exactly one consumer, whatever the numbers of shards, workers and ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch

T = TypeVar("T")


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


def assign(n_shards: int, consumer: Consumer) -> list[tuple[int, int, int]]:
    """The parts of an epoch's shard list read by ``consumer``: ``(shard position, stride, offset)``, meaning the
    samples whose index in the shard is ``offset`` modulo ``stride``."""
    c, n = consumer.index, consumer.count
    if n_shards >= n:
        return [(i, 1, 0) for i in range(c, n_shards, n)]
    i = c % n_shards
    return [(i, len(range(i, n, n_shards)), c // n_shards)]


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
