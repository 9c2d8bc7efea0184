"""Distillation loss against stored teacher features."""

from __future__ import annotations

import torch


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the valid cells of ``(B, C, H, W)`` features (``valid``: bool ``(B, H, W)``).

    Padding cells (False in ``valid``, e.g. below/right of a longest-side-resized image) do not contribute.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} "
                         f"differ: project the student's output to the teacher's (C, H, W) first")
    err = (student.float() - teacher.float()).pow(2).mean(dim=1)
    if valid is None:
        return err.mean()
    if valid.shape != err.shape:
        raise ValueError(f"valid mask {tuple(valid.shape)} does not match the features' (B, H, W) {tuple(err.shape)}")
    w = valid.to(err.dtype)
    return (err * w).sum() / w.sum().clamp_min(1)
