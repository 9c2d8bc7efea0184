"""Pixel rules shared by the writers and the readers of built data (prep, loaders, distill).

One definition each of: the patch targets (max-pool of the mask) and their ``patchN`` entry names, the named pixel
normalisations, the longest-side resize size, and tar-safe sample keys. numpy only.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# ---- patch targets --------------------------------------------------------------------------------------------

_PATCH_FIELD = re.compile(r"^patch([1-9][0-9]*)$")


def patch_size(field: str) -> int | None:
    """N for a ``patchN`` field name (the sample entry ``patchN.npy``), else None."""
    m = _PATCH_FIELD.match(field)
    return int(m.group(1)) if m else None


def patch_targets(mask: np.ndarray, patch: int) -> np.ndarray:
    """Max-pool of a bool mask with kernel = stride = ``patch``: uint8 0/1 grid of shape (H/patch, W/patch)."""
    return _pool(mask, patch).astype(np.uint8)


def _pool(grid: np.ndarray, k: int) -> np.ndarray:
    h, w = grid.shape
    if h % k or w % k:
        raise ValueError(f"patch size {k} does not divide the mask size {h}x{w}")
    # rows first, then columns: two contiguous reductions are ~10x faster than one over axes (1, 3)
    return grid.reshape(h // k, k, w).any(axis=1).reshape(h // k, w // k, k).any(axis=2)


def patch_pyramid(mask: np.ndarray, patches: tuple[int, ...]) -> dict[int, np.ndarray]:
    """``patch_targets`` for several sizes at once, each coarser grid pooled from the finest one dividing it
    (max-pooling composes exactly), so the full-resolution mask is scanned once."""
    out: dict[int, np.ndarray] = {}
    for p in sorted(patches):
        base = max((q for q in out if p % q == 0), default=None)
        out[p] = _pool(mask, p) if base is None else _pool(out[base], p // base)
    return {p: out[p].astype(np.uint8) for p in patches}


# ---- pixel normalisation --------------------------------------------------------------------------------------

SAM_MEAN = (123.675, 116.28, 103.53)  # segment_anything's Sam.pixel_mean (0-255 scale)
SAM_STD = (58.395, 57.12, 57.375)  # segment_anything's Sam.pixel_std

#: Named pixel normalisations on the 0-255 scale, ``(x - mean) / std``. none: 0..255; unit: [0, 1] (as MedSAM
#: trains); sam: segment_anything's; esp-medsam: ``(x - mean) / mean``, as the authors' BinaryLoader does (it
#: builds pixel_std from pixel_mean).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    "sam": (SAM_MEAN, SAM_STD),
    "esp-medsam": (SAM_MEAN, SAM_MEAN),
}
#: Per-image normalisations: minmax, ``(x - min) / (max - min)`` over the image's valid (unpadded) region, padding 0,
#: as MedSAM and LiteMedSAM train.
PER_IMAGE_NORMALIZATIONS = ("minmax",)
#: Prompt fields a build can record as its readers' default (``--prompts``).
PROMPT_FIELDS = ("points", "boxes")


# ---- geometry -------------------------------------------------------------------------------------------------


def longest_side(h: int, w: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to ``size``, rounded half up (``ResizeLongestSide``'s
    ``get_preprocess_shape``; the build's ``--resize longest``)."""
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


#: meta.json key of a sample's whole-object box in its original frame: inclusive ``[x_min, y_min, x_max, y_max]`` of
#: the mask before resizing (``original_hw``), null for an empty mask.
ORIGINAL_BOX = "original_box"
#: How the whole-object box prompt (row 0 of the ``boxes`` field) is computed, recorded by a build (``--box-rule``):
#: ``mask``: the box of the sample's final mask; ``truncate``: LiteMedSAM's ``resize_box_to_256``, the original
#: mask's box scaled by ``size / max(H, W)`` and truncated (for ``--resize longest`` builds).
BOX_RULES = ("mask", "truncate")


def truncate_box(box: list[int] | np.ndarray, hw: tuple[int, int], size: int) -> np.ndarray:
    """An original-frame box scaled to a longest-side ``size`` frame as LiteMedSAM's inference code does
    (``resize_box_to_256``: ``int(b * size / max(H, W))`` per coordinate): int64 ``(4,)``."""
    return np.floor(np.asarray(box, np.float64) * (size / max(hw))).astype(np.int64)


def recorded_box(meta: dict[str, Any], size: int) -> np.ndarray | None:
    """``truncate_box`` of the whole-object box a sample's ``meta.json`` records, at ``size``; None where the meta
    records none (an empty mask, a build made before ``original_box`` was recorded) or the build's frame is not the
    original's scaled (``resize`` other than ``longest``). A box that is not inside ``original_hw`` raises
    ``ValueError``."""
    box = meta.get(ORIGINAL_BOX)
    if box is None or meta.get("resize") != "longest":
        return None
    hw = meta.get("original_hw")
    ok = (isinstance(hw, list) and len(hw) == 2 and isinstance(box, list) and len(box) == 4
          and all(isinstance(v, int) and not isinstance(v, bool) for v in (*hw, *box))
          and 0 <= box[0] <= box[2] < hw[1] and 0 <= box[1] <= box[3] < hw[0])
    if not ok:
        raise ValueError(f"{ORIGINAL_BOX} {box!r} with original_hw {hw!r}: expected an inclusive [x_min, y_min, "
                         f"x_max, y_max] of whole pixels inside the original (height, width)")
    return truncate_box(box, tuple(hw), size)


# ---- sample keys ----------------------------------------------------------------------------------------------


def safe_key(text: str) -> str:
    """``text`` with every run of characters other than [A-Za-z0-9_-] replaced by '_' (tar- and URL-safe)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def make_key(dataset: str, source_id: str) -> str:
    """Sample key ``<dataset>-<source id>``, the source id made tar-safe (``safe_key``) and stripped of '_' at
    its ends (``x`` if nothing is left)."""
    return f"{dataset}-{safe_key(source_id).strip('_') or 'x'}"
