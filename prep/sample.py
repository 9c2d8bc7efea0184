"""Turn one record into one webdataset sample (the entries of DESIGN.md, 'Sample format')."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from medprep.manifests.pixels import ORIGINAL_BOX, patch_pyramid

from .datasets.base import Converter, Loaded, Record
from .imaging import ConversionError, Geometry, encode_npy, encode_png, mask_box, to_rgb
from .params import BuildParams


def convert(conv: Converter, rec: Record, loaded: Loaded, hashes: dict[str, str], key: str, sample_id: str,
            split: str, modality_id: int, params: BuildParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """Normalise, resize and encode one decoded sample of ``rec``. Returns (webdataset sample, samples.jsonl row).

    Raises ``ConversionError`` (or another exception) for inputs that cannot be converted.
    """
    image, intensity = to_rgb(loaded.image)
    geo = Geometry.plan(image.shape[:2], params.size, params.resize, params.interpolation)
    inst = geo.label(loaded.inst) if loaded.inst is not None else None
    mask = geo.label(loaded.mask) if inst is None else inst > 0  # one resize, not two, for instance datasets
    valid = mask[: geo.out_hw[0], : geo.out_hw[1]]
    meta = {
        "dataset": conv.name,
        "split": split,
        "modality": rec.modality or conv.modality,
        "modality_id": modality_id,
        "modality_map": params.modality_map_label,
        "source_id": sample_id,
        "source": {"image": rec.image, "masks": list(rec.masks), **({"extras": rec.extras} if rec.extras else {})},
        "sha256": hashes,
        "original_hw": list(image.shape[:2]),
        ORIGINAL_BOX: mask_box(loaded.mask),
        "size": params.size,
        "resize": params.resize,
        "interpolation": {"image": geo.interpolation(), "mask": "nearest"},
        "valid_hw": list(geo.out_hw),
        "foreground": round(np.count_nonzero(valid) / max(1, valid.size), 6),
        "image_normalisation": intensity,
        **({"group": rec.group} if rec.group is not None else {}),
        **rec.info,
        **loaded.info,
    }
    sample: dict[str, Any] = {
        "__key__": key,
        "image.png": encode_png(geo.image(image)),
        "mask.png": encode_png(mask.view(np.uint8) * np.uint8(255)),
        "modality.cls": str(modality_id).encode(),
        "meta.json": _strict_json(meta, rec.image),
    }
    for p, grid in patch_pyramid(mask, params.patch_sizes).items():
        sample[f"patch{p}.npy"] = encode_npy(grid)
    for name, extra in loaded.extras.items():
        sample[f"{name}.png"] = encode_png(geo.label(extra).view(np.uint8) * np.uint8(255))
    if inst is not None:
        sample["inst.png"] = encode_png(inst)
    row = {
        "key": key,
        "split": split,
        "source_id": sample_id,
        "sha256": hashes,
        "original_hw": meta["original_hw"],
        "foreground": meta["foreground"],
        **({"group": rec.group} if rec.group is not None else {}),
        # counted on the smaller map: the source one when the resize keeps every pixel (the same labels)
        **({"instances": _labels_present(loaded.inst if geo.samples_every_pixel() else inst)}
           if inst is not None else {}),
    }
    return sample, row


def _strict_json(meta: dict[str, Any], name: str) -> bytes:
    """``meta`` as strict JSON (no NaN or Infinity, which JSON readers other than Python's refuse)."""
    try:
        return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        bad = sorted(k for k, v in meta.items() if "NaN" in json.dumps(v) or "Infinity" in json.dumps(v))
        raise ConversionError(f"{name}: meta field(s) {', '.join(bad)} hold a number that is not finite (NaN or "
                              f"Infinity), which meta.json (strict JSON) cannot record; fix the input's "
                              f"header") from None


def _labels_present(inst: np.ndarray) -> int:
    """Distinct nonzero labels of an instance map. A label's first pixel (row-major) lies in the first 8-byte block
    of the map or in one that differs from the block before it (else the label is there 8 bytes earlier), so only
    those blocks are looked up: a comparison of 64-bit words, ~10x cheaper than a bincount of the map."""
    flat = np.ascontiguousarray(inst).ravel()
    per = 8 // flat.itemsize
    if flat.size % per:  # whole blocks: pad with the first label, which adds none
        flat = np.concatenate([flat, np.full(per - flat.size % per, flat[0], flat.dtype)])
    blocks = flat.view(np.uint64)
    pixels = flat.reshape(-1, per)
    seen = np.zeros(1 << 8 * flat.itemsize if flat.itemsize <= 2 else int(flat.max()) + 1, bool)
    seen[pixels[0]] = True
    seen[pixels[np.flatnonzero(blocks[1:] != blocks[:-1]) + 1]] = True
    return int(np.count_nonzero(seen[1:]))


def worst_case_bytes(params: BuildParams, extras: int = 2) -> int:
    """Upper bound of one sample's size in a tar: raw pixels of every entry plus headers."""
    px = params.size * params.size
    patches = sum(px // (p * p) + 512 for p in params.patch_sizes)
    return int((3 * px + px + 2 * px * extras + patches) * 1.01) + 16 * 1024
