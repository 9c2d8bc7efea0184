"""The build's one parameter object: validated on construction, recorded in the manifest, sent to the workers."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medprep.manifests.modalities import MAP_NAMES, NAME_MAPS
from medprep.manifests.pixels import NORMALIZATIONS, PER_IMAGE_NORMALIZATIONS, PROMPT_FIELDS

from .datasets import Converter, converter_class, dataset_name, get_converter, modality_id
from .imaging import INTERPOLATIONS, PNG_CODEC, RESIZE_MODES
from .presets import PRESETS, apply_preset

SPLIT_RULES = ("official", "811", "test", "file")
SIZE_RANGE = (8, 8192)  # output side length in pixels; 8192 already makes one worst-case sample ~540 MB
# recipe fields: None means not set; the manifest records them only when set
RECIPE_FIELDS = ("preset", "interpolation", "normalize", "prompts", "box_jitter")


class BuildError(RuntimeError):
    """A build that cannot proceed (an existing build in the way, a --strict failure, colliding keys)."""


@dataclass(frozen=True)
class BuildParams:
    """Every parameter a build's bytes depend on (recorded in the manifest).

    Construction normalises (the dataset's registered name, tuples, ``str`` paths, converter options without
    ``None`` values) and validates every
    field, the converter options and the modality table included, raising ``ValueError`` with the option to fix.

    Recipe fields: ``preset`` (the name; :meth:`of` fills the parameters not given from it), ``interpolation``
    (the image's; default area when shrinking, linear when enlarging), and, recorded for the readers without
    changing any byte, ``normalize`` (the pixel normalisation the model trains with), ``prompts`` (the prompt field
    loaders give) and ``box_jitter`` (its box perturbation bound).
    """

    dataset: str
    size: int = 1024
    resize: str = "stretch"
    patch_sizes: tuple[int, ...] = (16, 32, 64)
    modality_map: str = "default"
    seed: int = 0
    split_rule: str | None = None
    split_file: str | None = None
    group_by: str | None = None
    shard_size: int = 1_000_000_000
    shard_samples: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    interpolation: str | None = None
    normalize: str | None = None
    prompts: str | None = None
    box_jitter: int | None = None

    def __post_init__(self) -> None:
        norm = {"dataset": dataset_name(self.dataset),  # DRIVE, Kvasir_SEG: the registered spelling
                "patch_sizes": tuple(int(p) for p in self.patch_sizes), "shard_size": int(self.shard_size),
                "split_file": os.fspath(self.split_file) if self.split_file else None,
                "options": {k: v for k, v in dict(self.options).items() if v is not None}}
        for name, value in norm.items():
            object.__setattr__(self, name, value)
        lo, hi = SIZE_RANGE
        if not lo <= self.size <= hi:
            raise ValueError(f"--size {self.size}: expected {lo}..{hi} pixels")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"--resize {self.resize!r}: expected one of {', '.join(RESIZE_MODES)}")
        bad = [p for p in self.patch_sizes if p <= 0 or self.size % p]
        if bad:
            raise ValueError(f"--patch-sizes {bad} must divide --size {self.size}")
        if self.split_rule is not None and self.split_rule not in SPLIT_RULES:
            raise ValueError(f"--split-rule {self.split_rule!r}: expected one of {', '.join(SPLIT_RULES[:3])} "
                             f"(or give --split-file)")
        if self.split_rule == "file" and self.split_file is None:
            raise ValueError("--split-rule file needs --split-file FILE")
        if self.shard_size < 1 or (self.shard_samples is not None and self.shard_samples < 1):
            raise ValueError(f"--shard-size and --shard-samples must be positive, got {self.shard_size} and "
                             f"{self.shard_samples}")
        if self.modality_map not in MAP_NAMES:
            raise ValueError(f"--modality-map {self.modality_map!r}: expected one of {', '.join(MAP_NAMES)}")
        if self.modality_map not in NAME_MAPS:
            modality_id(self.converter().modality, self.modality_map)  # unknown dataset, option or modality
        else:
            self.converter()  # unknown dataset or option
        choices = {"preset": tuple(PRESETS), "interpolation": tuple(INTERPOLATIONS),
                   "normalize": (*NORMALIZATIONS, *PER_IMAGE_NORMALIZATIONS), "prompts": PROMPT_FIELDS}
        for name, allowed in choices.items():
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                raise ValueError(f"--{name} {getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if self.box_jitter is not None and (not isinstance(self.box_jitter, int) or self.box_jitter < 0):
            raise ValueError(f"--box-jitter {self.box_jitter!r}: expected a whole number of pixels >= 0")

    @classmethod
    def of(cls, dataset: str, **keywords: Any) -> BuildParams:
        """``BuildParams`` from keywords: the field names go to the fields, any other keyword is a converter option
        (``BuildParams.of("folder", size=256, images="imgs/*")``). ``None`` means not given: the field's default,
        or with ``preset=NAME`` the preset's value (values given explicitly override the preset)."""
        names = {f.name for f in fields(cls)} - {"dataset", "options"}
        options = {**keywords.pop("options", {}), **{k: keywords.pop(k) for k in list(keywords) if k not in names}}
        given = {k: v for k, v in keywords.items() if v is not None}
        takes = [f.name for f in fields(converter_class(dataset).Options)]
        given = apply_preset(given.pop("preset", None), {**given, "options": options}, takes)
        return cls(dataset, **given)

    def converter(self) -> Converter:
        """The dataset's converter with these options."""
        return get_converter(self.dataset, **self.options)

    @property
    def modality_id(self) -> int | None:
        """The modality id stamped into every sample (the converter's modality in ``modality_map``); None for a map
        that gives each sample its own id (``sample_modality_id``)."""
        if self.modality_map in NAME_MAPS:
            return None
        return modality_id(self.converter().modality, self.modality_map)

    def sample_modality_id(self, conv: Converter, sample_id: str) -> int:
        """The modality id of sample ``sample_id``: ``modality_id``, or for a per-sample map (``esp-medsam-released``)
        the id of its ESP-MedSAM file name."""
        return modality_id(conv.modality, self.modality_map, conv.esp_file_id(sample_id))

    def recorded(self, split_file_sha: str | None) -> dict[str, Any]:
        """The parameters as the manifest records them (the split file by name and sha256)."""
        d = asdict(self)
        d["patch_sizes"] = list(self.patch_sizes)
        d["split_file"] = {"name": Path(self.split_file).name, "sha256": split_file_sha} if self.split_file else None
        d["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.options.items()}
        d["png_codec"] = PNG_CODEC
        for name in RECIPE_FIELDS:
            if d[name] is None:
                del d[name]
        return d


__all__ = ["SIZE_RANGE", "SPLIT_RULES", "BuildError", "BuildParams"]
