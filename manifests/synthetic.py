"""Fake pixels shared by the fake-data makers of every layer (``medprep.prep.synthetic``,
``medprep.distill.synthetic``): tests, demos and benchmarks only, never imported by production code."""

from __future__ import annotations

import numpy as np


def scene(h: int, w: int, rng: np.random.Generator, blobs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image (smooth background + noise + dark elliptic blobs) and the bool mask of its blobs."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 200, 3).astype(np.float32)
    grad = (xx / max(w, 1))[..., None] * rng.uniform(-40, 40, 3) + (yy / max(h, 1))[..., None] * rng.uniform(-40, 40, 3)
    img = base + grad + rng.normal(0, 6, (h, w, 3))
    mask = np.zeros((h, w), bool)
    for _ in range(blobs):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.08, 0.22) * h, rng.uniform(0.08, 0.22) * w
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        mask |= blob
        img[blob] -= rng.uniform(30, 60)
    return np.clip(img, 0, 255).astype(np.uint8), mask
