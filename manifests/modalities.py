"""Modality id tables: the id stored in every sample (``modality.cls``, ``meta.json``) and read by training code."""

from __future__ import annotations

from typing import Callable

# Default modality table (the papers' order) and the order of the authors' released ESP-MedSAM checkpoints.
# ct (6) and mr (7) are medprep's additions for slices of volumes (--dataset volumes / medsam-npz), in both tables.
MODALITY_MAPS: dict[str, dict[str, int]] = {
    "default": {"dermoscopy": 0, "x-ray": 1, "fundus": 2, "colonoscopy": 3, "ultrasound": 4, "microscopy": 5,
                "ct": 6, "mr": 7},
    "esp-medsam": {"dermoscopy": 0, "x-ray": 1, "ultrasound": 2, "fundus": 3, "microscopy": 4, "colonoscopy": 5,
                   "ct": 6, "mr": 7},
}

#: Number of modality ids (one more than the largest id of any table): the rows a per-modality embedding needs.
N_MODALITIES: int = 1 + max(i for ids in MODALITY_MAPS.values() for i in ids.values())


def esp_medsam_released_id(file_name: str) -> int:
    """The id the ESP-MedSAM authors' loader derives from an exported file name, which their released checkpoints
    were trained with (``BinaryLoader.__getitem__`` in xq141839/ESP-MedSAM ``dataloader.py``): the stem up to the
    first dot; its part before the first ``_`` is ``ISIC`` 0, ``CHNCXR`` 1, ``ultra`` 2; any other stem with a
    ``_`` 3 (DRIVE's ``22_training``, but also Montgomery's ``MCUCXR_0001_0``); without ``_``, longer than 10
    characters 4 (DSB's hex ids), else 5 (CVC's numbers)."""
    stem = file_name.split(".")[0]
    head = stem.split("_")[0]
    named = {"ISIC": 0, "CHNCXR": 1, "ultra": 2}
    if head in named:
        return named[head]
    if "_" in stem:
        return 3
    return 4 if len(head) > 10 else 5


#: ``esp_medsam_released_id`` in words (for listings).
RELEASED_RULE = ("ISIC_* 0, CHNCXR_* 1, ultra_* 2, any other name with _ 3, a name without _ longer than 10 "
                 "characters 4, else 5")
#: Id maps computed per sample from its file name in the ESP-MedSAM export layout, not from its modality.
NAME_MAPS: dict[str, Callable[[str], int]] = {"esp-medsam-released": esp_medsam_released_id}
#: Every ``--modality-map`` name.
MAP_NAMES: tuple[str, ...] = (*MODALITY_MAPS, *NAME_MAPS)


def modality_id(modality: str, table: str = "default", name: str | None = None) -> int:
    """The id of ``modality`` in the named table (``--modality-map``); for a map of ``NAME_MAPS``, the id of the
    sample exported as ``name``."""
    if table in NAME_MAPS:
        if name is None:
            raise ValueError(f"--modality-map {table}: the id depends on each sample's exported file name; pass "
                             f"the name (the modality {modality!r} alone does not decide it)")
        return NAME_MAPS[table](name)
    try:
        ids = MODALITY_MAPS[table]
    except KeyError:
        raise ValueError(f"--modality-map {table!r}: expected one of {', '.join(MAP_NAMES)}") from None
    if modality not in ids:
        raise ValueError(f"modality {modality!r} is not in the {table!r} table ({', '.join(ids)})")
    return ids[modality]
