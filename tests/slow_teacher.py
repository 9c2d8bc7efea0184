"""A teacher for tests that kill a worker mid-run: :func:`~medprep.distill.teachers.random_sam` with a pause before
every batch, so that a part of a cache run is still running when the test acts (same features, same bytes)."""

from __future__ import annotations

import time

import torch
from torch import nn

from medprep.distill.teachers import Preprocess, random_sam


class _Paused(nn.Module):
    def __init__(self, encoder: nn.Module, pause_s: float):
        super().__init__()
        self.encoder, self.pause_s = encoder, pause_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.pause_s)
        return self.encoder(x)


def slow_random_sam(checkpoint: str | None = None, pause_s: float = 0.5, **kwargs) -> tuple[nn.Module, Preprocess]:
    """``random_sam(**kwargs)`` whose encoder sleeps ``pause_s`` seconds before each batch."""
    encoder, pre = random_sam(checkpoint, **kwargs)
    return _Paused(encoder, pause_s), pre
