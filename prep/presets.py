"""The papers' recipes as build presets (``medprep build --preset NAME``).

Each preset is one declarative table: build parameter -> value, with the paper or script each value comes from.
Keys are ``BuildParams`` fields; ``options.<name>`` keys are converter options, applied to the datasets whose
converter takes them (``multilabel`` and ``min_object_pixels`` exist for slices of volumes and MedSAM npz files).
Options given explicitly override a preset. The README's preset table is generated from these tables
(``markdown_table``).

Parameters that do not change the shards' bytes are recorded for the readers: ``normalize`` (the pixel
normalisation the model was trained with, the default of loaders and teacher caches), ``prompts`` and
``box_jitter`` (the prompt field loaders give by default, and the bound of its random box perturbation), and
``box_rule`` (how the whole-object box prompt is computed: ``medprep.manifests.pixels.BOX_RULES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

OPTION = "options."


@dataclass(frozen=True)
class Setting:
    """One parameter of a preset and where in the paper's code or text its value comes from."""

    value: Any
    source: str


@dataclass(frozen=True)
class Preset:
    """A paper's recipe: its paper and code (``source``) and its settings (build parameter -> ``Setting``)."""

    name: str
    source: str
    settings: Mapping[str, Setting]


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("esp-medsam", "ESP-MedSAM / De-LightSAM (arXiv 2407.14153), code xq141839/ESP-MedSAM", {
        "size": Setting(1024, "dataloader.py BinaryLoader (img_size = 1024; image_1024/, mask_1024/)"),
        "resize": Setting("stretch", "the square image_1024/ files, no padded region"),
        "interpolation": Setting("linear", "the released image_1024/ files: bilinear image, nearest mask"),
        "patch_sizes": Setting((32,), "the paper's patch-level prompt targets, a 32 x 32 grid of the 1024 input"),
        "modality_map": Setting("esp-medsam-released", "dataloader.py BinaryLoader: the id from the file name"),
        "normalize": Setting("esp-medsam", "dataloader.py BinaryLoader: (x - mean) / mean"),
    }),
    Preset("litemedsam", "LiteMedSAM and CVPR 2024 \"MedSAM on laptop\", code bowang-lab/MedSAM (branch LiteMedSAM)", {
        "size": Setting(256, "train_one_gpu.py NpyDataset (image_size = 256)"),
        "resize": Setting("longest", "train_one_gpu.py resize_longest_side + pad_image"),
        "interpolation": Setting("area", "train_one_gpu.py resize_longest_side (cv2.INTER_AREA)"),
        "normalize": Setting("minmax", "train_one_gpu.py: per-image min-max to [0, 1]"),
        f"{OPTION}multilabel": Setting("each", "train_one_gpu.py NpyDataset: one label per sample"),
        f"{OPTION}min_object_pixels": Setting(10, "pre_CT_MR.py @1893706: voxel_num_thre2d = 10, 8-connected"),
        "prompts": Setting("boxes", "train_one_gpu.py: one box prompt per sample"),
        "box_jitter": Setting(5, "train_one_gpu.py @1a94cb17: -bbox_shift 5"),
        "box_rule": Setting("truncate", "CVPR24_LiteMedSAM_infer.py resize_box_to_256: int(box * 256 / max(H, W)) "
                                        "of the original mask's box"),
    }),
    Preset("medsam", "MedSAM (Nat. Commun. 15, 654, 2024), code bowang-lab/MedSAM", {
        "size": Setting(1024, "pre_CT_MR.py @3e703df (image_size = 1024)"),
        "resize": Setting("stretch", "pre_CT_MR.py @3e703df: transform.resize to 1024 x 1024"),
        "interpolation": Setting("cubic", "pre_CT_MR.py @3e703df: order=3 image, order=0 mask"),
        "normalize": Setting("minmax", "pre_CT_MR.py @3e703df: per-image min-max to [0, 1]"),
        f"{OPTION}min_object_pixels": Setting(100, "pre_CT_MR.py @3e703df: voxel_num_thre2d = 100, 8-connected"),
        "prompts": Setting("boxes", "train_one_gpu.py (main branch): box prompts"),
        "box_jitter": Setting(20, "train_one_gpu.py (main branch) NpyDataset: bbox_shift = 20"),
    }),
    Preset("sam", "Segment Anything (arXiv 2304.02643), code facebookresearch/segment-anything", {
        "size": Setting(1024, "ResizeLongestSide(1024)"),
        "resize": Setting("longest", "ResizeLongestSide + Sam.preprocess (pad bottom/right)"),
        "normalize": Setting("sam", "Sam.pixel_mean / pixel_std"),
    }),
)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"--preset {name!r}: expected one of {', '.join(PRESETS)}") from None


def apply_preset(name: str | None, explicit: Mapping[str, Any], takes: Iterable[str] = ()) -> dict[str, Any]:
    """Build keywords: the preset's values under the ``explicit`` ones (which win), plus ``preset=name``.

    ``explicit``: parameters given by the caller (field names, and converter options under ``options``);
    ``takes``: the converter's option names (a preset's ``options.X`` only applies where the converter takes X).
    """
    out = dict(explicit)
    if name is None:
        return out
    preset = get_preset(name)
    options = dict(out.get("options") or {})
    takes = set(takes)
    for key, setting in preset.settings.items():
        if key.startswith(OPTION):
            opt = key[len(OPTION):]
            if opt in takes and options.get(opt) is None:
                options[opt] = setting.value
        elif out.get(key) is None:
            out[key] = setting.value
    if options:
        out["options"] = options
    out["preset"] = name
    return out


def _cell(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def markdown_table() -> str:
    """The README table: preset (with its paper and code), parameter, value, and where the value comes from."""
    rows = ["| preset | parameter | value | from |", "|---|---|---|---|"]
    for p in PRESETS.values():
        for i, (key, s) in enumerate(p.settings.items()):
            shown = f"`-o {key[len(OPTION):]}`" if key.startswith(OPTION) else f"`--{key.replace('_', '-')}`"
            first = f"`{p.name}`: {p.source}" if i == 0 else ""
            rows.append(f"| {first} | {shown} | `{_cell(s.value)}` | {s.source} |")
    return "\n".join(rows)


__all__ = ["PRESETS", "Preset", "Setting", "apply_preset", "get_preset", "markdown_table"]
