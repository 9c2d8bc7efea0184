"""Prompt targets for SAM-style training: point and box prompts computed from a sample's final mask.

Computed after augmentation, from the mask the model is trained against, so prompts and targets always agree.
Regions are the 8-connected components of the mask or, when the sample has an instance map (``inst.png``,
DSB-2018, MoNuSeg), its instances. Both functions return arrays of a fixed length with a validity mask, so that
samples with different numbers of regions collate into one batch:

* ``points``: one ``(x, y)`` pixel per region, the region's centroid rounded to the nearest pixel; when that pixel
  is not in the region (a ring, a crescent: the centroid of a non-convex region can lie outside it), the region's
  pixel nearest to the centroid is taken instead. This is the point-prompt mode the ESP-MedSAM paper gives its SAM
  baselines.
* ``boxes``: row 0 is the box of the whole mask (of all regions), rows 1.. one box per region, ``(x_min, y_min, x_max, y_max)`` in
  inclusive pixel coordinates, each side pushed outwards by a seeded random number of pixels in ``[0, jitter]``.
  With ``box_rule="truncate"`` (recorded by ``--preset litemedsam`` builds) row 0 is instead LiteMedSAM's own box:
  ``resize_box_to_256`` of the original mask's box (``meta.json``'s ``original_box``), carried through flips and
  quarter turns; after an affine warp it falls back to the final mask's box.

Regions are ordered by area (largest first; ties: components in raster order of their first pixel, instances by
id); when there are more than ``count``, the largest ``count`` are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

from medprep.manifests.pixels import BOX_RULES

# The LiteMedSAM training script perturbs its box prompt by up to 5 pixels per side: bowang-lab/MedSAM, LiteMedSAM
# branch, train_one_gpu.py (commit 1a94cb17), `-bbox_shift` default 5, applied in NpyDataset.__getitem__ as
# x_min - randint(0, bbox_shift), x_max + randint(0, bbox_shift), ... clipped to [0, W] / [0, H].
BOX_JITTER = 5
PROMPT_COUNT = 16


@dataclass(frozen=True)
class Prompts:
    """How loaders compute the ``points`` and ``boxes`` fields: slots per sample, the box perturbation bound, and
    the rule of the whole-object box (``medprep.manifests.pixels.BOX_RULES``: ``mask`` or ``truncate``)."""

    count: int = PROMPT_COUNT
    box_jitter: int = BOX_JITTER
    box_rule: str = "mask"

    def __post_init__(self) -> None:
        if self.count < 1 or self.box_jitter < 0 or self.box_rule not in BOX_RULES:
            raise ValueError(f"Prompts(count={self.count}, box_jitter={self.box_jitter}, box_rule={self.box_rule!r}): "
                             f"expected count >= 1, box_jitter >= 0 pixels and box_rule one of {', '.join(BOX_RULES)}")

    def compute(self, wanted: Iterable[str], mask: np.ndarray, inst: np.ndarray | None,
                rng: np.random.Generator, whole: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The ``wanted`` prompt fields (``points``, ``boxes``) and their ``_valid`` masks for one final mask;
        ``whole``: row 0 of ``boxes`` by the model's own rule, where known (see :func:`boxes`)."""
        reg = regions(mask, inst)
        out: dict[str, np.ndarray] = {}
        if "points" in wanted:
            out["points"], out["points_valid"] = points(mask, inst, self.count, reg=reg)
        if "boxes" in wanted:
            out["boxes"], out["boxes_valid"] = boxes(mask, inst, self.count, self.box_jitter, rng, reg=reg,
                                                     whole=whole)
        return out


@dataclass(frozen=True)
class Regions:
    """Per-region statistics of a label map: area, centroid (x, y), inclusive box, and the label map itself."""

    labels: np.ndarray  # int32 (H, W), 0 = background, 1..n = components in raster order of their first pixel,
    #                     or instances in the order of their ids
    area: np.ndarray  # (n,) int64
    centroid: np.ndarray  # (n, 2) float64, (x, y)
    box: np.ndarray  # (n, 4) int64, (x_min, y_min, x_max, y_max)

    def order(self, count: int) -> np.ndarray:
        """Indices of the ``count`` largest regions, largest first (stable: ties keep raster order)."""
        return np.argsort(-self.area, kind="stable")[:count]


def regions(mask: np.ndarray, inst: np.ndarray | None = None) -> Regions:
    """The regions of a sample: the instances of ``inst`` when given (non-zero ids), else the 8-connected
    components of ``mask`` (non-zero pixels)."""
    if inst is not None:
        if inst.dtype.kind not in "ub":
            raise ValueError(f"instance map of dtype {inst.dtype}: expected unsigned integer ids (uint16 inst.png)")
        ids = np.flatnonzero(np.bincount(inst.ravel()))
        ids = ids[ids > 0]
        n = len(ids)
        lut = np.zeros(int(ids[-1]) + 1 if n else 1, np.int32)
        lut[ids] = np.arange(1, n + 1)
        labels = lut[inst]
    else:
        n, labels = cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8,
                                            ltype=cv2.CV_32S)
        n -= 1
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs] - 1
    area = np.bincount(lab, minlength=n)
    centroid = np.stack([np.bincount(lab, xs, n), np.bincount(lab, ys, n)], 1) / np.maximum(area, 1)[:, None]
    box = np.empty((n, 4), np.int64)
    box[:, :2] = np.iinfo(np.int64).max
    box[:, 2:] = -1
    np.minimum.at(box[:, 0], lab, xs)
    np.minimum.at(box[:, 1], lab, ys)
    np.maximum.at(box[:, 2], lab, xs)
    np.maximum.at(box[:, 3], lab, ys)
    return Regions(labels, area, centroid, box)


def _on_region(reg: Regions, k: int) -> tuple[int, int]:
    """Region ``k``'s centroid rounded to a pixel, or the region's pixel nearest to the centroid when the rounded
    centroid is not in the region (ties: the first such pixel in raster order)."""
    cx, cy = reg.centroid[k]
    x, y = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
    if reg.labels[y, x] == k + 1:
        return x, y
    x0, y0, x1, y1 = reg.box[k]
    ys, xs = np.nonzero(reg.labels[y0: y1 + 1, x0: x1 + 1] == k + 1)
    i = int(np.argmin((xs + x0 - cx) ** 2 + (ys + y0 - cy) ** 2))
    return int(xs[i] + x0), int(ys[i] + y0)


def points(mask: np.ndarray, inst: np.ndarray | None = None, count: int = PROMPT_COUNT,
           reg: Regions | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One point per region (see the module doc): float32 ``(count, 2)`` ``(x, y)`` and bool ``(count,)`` valid.

    ``reg``: the ``regions`` of the sample when already computed (for ``boxes`` too)."""
    reg = regions(mask, inst) if reg is None else reg
    out = np.zeros((count, 2), np.float32)
    valid = np.zeros(count, bool)
    for row, k in enumerate(reg.order(count)):
        out[row] = _on_region(reg, int(k))
        valid[row] = True
    return out, valid


def boxes(mask: np.ndarray, inst: np.ndarray | None = None, count: int = PROMPT_COUNT, jitter: int = BOX_JITTER,
          rng: np.random.Generator | int = 0, reg: Regions | None = None,
          whole: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Box of the whole mask (row 0) and one box per region (rows 1..count): float32 ``(count + 1, 4)``
    ``(x_min, y_min, x_max, y_max)`` and bool ``(count + 1,)`` valid.

    ``whole``: the exact row 0 when given (the model family's own rule, e.g. LiteMedSAM's box of the original mask);
    row 0 is then valid even where the final mask lost the object. The random draws are the same either way.

    Each side moves outwards by an integer drawn uniformly from ``[0, jitter]`` with ``rng`` (a generator or a
    seed), clipped to ``[0, W]`` x ``[0, H]`` as in the LiteMedSAM script; ``jitter=0`` gives the exact boxes.
    """
    if jitter < 0:
        raise ValueError(f"box jitter {jitter}: expected a number of pixels >= 0")
    reg = regions(mask, inst) if reg is None else reg
    h, w = reg.labels.shape
    out = np.zeros((count + 1, 4), np.float32)
    valid = np.zeros(count + 1, bool)
    chosen = reg.order(count)
    exact = np.zeros((len(chosen) + 1, 4), np.int64)
    if len(chosen):
        exact[0] = [*reg.box[:, :2].min(0), *reg.box[:, 2:].max(0)]
        exact[1:] = reg.box[chosen]
    if whole is not None:
        exact[0] = whole
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    shift = gen.integers(0, jitter + 1, exact.shape) * np.array([-1, -1, 1, 1])
    moved = np.clip(exact + shift, 0, [w, h, w, h])
    rows = len(exact) if len(chosen) or whole is not None else 0
    out[:rows] = moved[:rows]
    valid[:rows] = True
    return out, valid


__all__ = ["BOX_JITTER", "PROMPT_COUNT", "Prompts", "Regions", "boxes", "points", "regions"]
