"""What a cache run reports while it works: events handed to the caller's ``on_event`` callback.

The library draws nothing; the CLI turns these into its status line and progress bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union


@dataclass(frozen=True)
class RunOpened:
    """The run is open: ``todo`` of its ``nshards`` zarr shards will be written, ``images`` encoder inputs in all
    (samples times views); ``resumed`` encoder inputs of the shards asked for were done by an earlier run."""

    url: str
    run: str
    nshards: int
    todo: list[int]
    images: int
    resumed: int = 0


@dataclass(frozen=True)
class Encoded:
    """``images`` more encoder inputs are done."""

    images: int


@dataclass(frozen=True)
class Skipped:
    """The image of sample ``key`` could not be read (``reason``) and was skipped (``--max-failures``): the sample
    stays not done, so a rerun tries it again."""

    key: str
    reason: str


CacheEvent = Union[RunOpened, Encoded, Skipped]
OnEvent = Callable[[CacheEvent], None]

__all__ = ["CacheEvent", "Encoded", "OnEvent", "RunOpened", "Skipped"]
