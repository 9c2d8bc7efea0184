"""Geometric augmentations that keep every target consistent with the image.

Flips and 90-degree rotations are applied exactly to the image, the mask, the instance map, the FOV mask and the
patch grids (max-pooling commutes with them). Any other geometric transform (``affine``: rotation by any angle,
scale, shift) warps the image (linear) and the label maps (nearest) and then recomputes the patch targets from the
warped mask with the same max-pool the build uses (``medprep.manifests.pixels.patch_targets``).

Arrays are keyed by field name: ``image`` uint8 (H, W, 3), ``mask``/``fov`` bool (H, W), ``inst`` uint16 (H, W),
``patchN`` uint8 (H/N, W/N). ``BOX_CORNERS`` (bool (H, W), two opposite corners of a box set) follows flips and
quarter turns exactly (the box of the moved corners is the moved box) and is dropped by a warp.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from medprep.manifests.pixels import patch_size, patch_targets

#: The array of a box's two opposite corners (see the module doc): a warp drops it, as a rotated box is no box.
BOX_CORNERS = "_box_corners"


def flip(arrays: dict[str, np.ndarray], axis: int) -> dict[str, np.ndarray]:
    """Flip every array along ``axis`` (0: vertical, 1: horizontal)."""
    return {k: np.flip(v, axis) for k, v in arrays.items()}


def rot90(arrays: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Rotate every array by ``k`` quarter turns (counter-clockwise) in the image plane."""
    return {name: np.rot90(v, k, axes=(0, 1)) for name, v in arrays.items()}


@dataclass(frozen=True)
class Affine:
    """Random rotation (degrees), isotropic scale and shift (fraction of the side), applied with probability p."""

    degrees: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    p: float = 0.5

    def matrix(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        angle = rng.uniform(-self.degrees, self.degrees)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, rng.uniform(*self.scale))
        m[:, 2] += rng.uniform(-self.translate, self.translate, 2) * (w, h)
        return m

    def apply(self, arrays: dict[str, np.ndarray], m: np.ndarray) -> dict[str, np.ndarray]:
        """Warp image and label maps with ``m``; patch grids are recomputed from the warped mask; ``BOX_CORNERS`` is
        dropped."""
        patches = [name for name in arrays if patch_size(name)]
        if patches and "mask" not in arrays:
            raise ValueError(f"recomputing {', '.join(patches)} after a warp needs the mask among the arrays")
        out = {}
        for name, v in arrays.items():
            if name in patches or name == BOX_CORNERS:
                continue
            h, w = v.shape[:2]
            src = np.ascontiguousarray(v.view(np.uint8) if v.dtype == bool else v)
            flag = cv2.INTER_LINEAR if name == "image" else cv2.INTER_NEAREST
            warped = cv2.warpAffine(src, m, (w, h), flags=flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            out[name] = warped.astype(bool) if v.dtype == bool else warped
        for name in patches:
            out[name] = patch_targets(out["mask"], patch_size(name))
        return out


@dataclass(frozen=True)
class Augment:
    """Random flips (probabilities ``hflip``, ``vflip``), a random quarter turn (probability ``rot90``) and an
    optional ``Affine``. Deterministic for a given ``rng``."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    affine: Affine | None = None

    @property
    def recomputes_patches(self) -> bool:
        """True when patch targets must be recomputed from the mask (a non-exact transform is configured)."""
        return self.affine is not None

    def __call__(self, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        if rng.random() < self.hflip:
            arrays = flip(arrays, 1)
        if rng.random() < self.vflip:
            arrays = flip(arrays, 0)
        if rng.random() < self.rot90:
            arrays = rot90(arrays, int(rng.integers(1, 4)))
        if self.affine is not None and rng.random() < self.affine.p:
            h, w = arrays["mask"].shape
            arrays = self.affine.apply(arrays, self.affine.matrix(h, w, rng))
        return arrays
