"""Modality id tables: the id stored in every sample (``modality.cls``, ``meta.json``) and read by training code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

# Default modality table (the papers' order) and the order of the authors' released ESP-MedSAM checkpoints.
# ct (6) and mr (7) are medprep's additions for slices of volumes (--dataset volumes / medsam-npz), in both tables;
# pet .. endoscopy (8-11) complete the 11 modalities of the CVPR 2024 "MedSAM on laptop" challenge in the default one.
# ``medsam-laptop`` numbers those 11 in the challenge's order (it has no colonoscopy: its endoscopy covers it).
MODALITY_MAPS: dict[str, dict[str, int]] = {
    "default": {"dermoscopy": 0, "x-ray": 1, "fundus": 2, "colonoscopy": 3, "ultrasound": 4, "microscopy": 5,
                "ct": 6, "mr": 7, "pet": 8, "mammography": 9, "oct": 10, "endoscopy": 11},
    "esp-medsam": {"dermoscopy": 0, "x-ray": 1, "ultrasound": 2, "fundus": 3, "microscopy": 4, "colonoscopy": 5,
                   "ct": 6, "mr": 7},
    "medsam-laptop": {"ct": 0, "mr": 1, "pet": 2, "x-ray": 3, "ultrasound": 4, "mammography": 5, "oct": 6,
                      "endoscopy": 7, "fundus": 8, "dermoscopy": 9, "microscopy": 10},
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


def is_table_file(table: str) -> bool:
    """Whether a ``--modality-map`` value names a JSON file of the user's own table (rather than a built-in one)."""
    return str(table).lower().endswith(".json")


def read_modality_table(path: str | Path) -> dict[str, int]:
    """A user's modality table from a JSON file ``{"ct": 0, "mr": 1, ...}``: names to unique whole ids >= 0.
    Raises ``ValueError`` naming the file, the field and the value that is wrong."""
    where = f"--modality-map {path}"
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{where}: cannot read the file ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: not JSON ({e}); expected an object of modality names to ids, e.g. "
                         f'{{"ct": 0, "mr": 1}}') from None
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{where}: expected a non-empty JSON object of modality names to ids, e.g. "
                         f'{{"ct": 0, "mr": 1}}; found {type(doc).__name__} {json.dumps(doc)[:60]}')
    seen: dict[int, str] = {}
    for name, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: field {name!r} has value {json.dumps(value)}; expected a whole number >= 0")
        if value in seen:
            raise ValueError(f"{where}: field {name!r} has value {value}, the id of {seen[value]!r} already; each "
                             f"modality needs its own id")
        seen[value] = name
    return dict(doc)


def recorded_table(params: dict) -> dict[str, int] | None:
    """The modality table a build's recorded ``params`` stamped its ids with: a user's table as recorded
    (``modality_table``), a built-in one by name; None for a per-sample name map or an unknown name."""
    table = params.get("modality_table")
    if isinstance(table, dict):
        return table
    return MODALITY_MAPS.get(params.get("modality_map", "default"))


def modality_ids(table: str) -> dict[str, int]:
    """The ids of a built-in table (``MODALITY_MAPS``) or of a user's table file (``read_modality_table``)."""
    if is_table_file(table):
        return read_modality_table(table)
    try:
        return MODALITY_MAPS[table]
    except KeyError:
        raise ValueError(f"--modality-map {table!r}: expected one of {', '.join(MAP_NAMES)} or a FILE.json of "
                         f"your own") from None


def modality_id(modality: str, table: str = "default", name: str | None = None,
                ids: dict[str, int] | None = None) -> int:
    """The id of ``modality`` in the named table (``--modality-map``; ``ids``: its content, when already read);
    for a map of ``NAME_MAPS``, the id of the sample exported as ``name``."""
    if table in NAME_MAPS:
        if name is None:
            raise ValueError(f"--modality-map {table}: the id depends on each sample's exported file name; pass "
                             f"the name (the modality {modality!r} alone does not decide it)")
        return NAME_MAPS[table](name)
    ids = modality_ids(table) if ids is None else ids
    if modality not in ids:
        raise ValueError(f"modality {modality!r} is not in the {table!r} table ({', '.join(ids)})"
                         + ("; add it to the file" if is_table_file(table) else ""))
    return ids[modality]
