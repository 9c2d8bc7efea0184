"""The build's one parameter object: validated on construction, recorded in the manifest, sent to the workers."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from medprep.manifests import SPLITS
from medprep.manifests.errors import MedprepError
from medprep.manifests.modalities import MAP_NAMES, NAME_MAPS, is_table_file, modality_ids
from medprep.manifests.pixels import BOX_RULES, NORMALIZATIONS, PER_IMAGE_NORMALIZATIONS, PROMPT_FIELDS

from .datasets import Converter, converter_class, dataset_name, get_converter, modality_id
from .datasets.options import coerced
from .imaging import INTERPOLATIONS, MAX_PIXELS, PNG_CODEC, RESIZE_MODES
from .presets import PRESETS, apply_preset
from .tree import read_regular

SPLIT_RULES = ("official", "811", "test", "file")
SIZE_RANGE = (8, 8192)  # output side length in pixels; 8192 already makes one worst-case sample ~540 MB
SHARD_BYTES_MAX = 1 << 40  # 1 TiB: a larger --shard-bytes is a typo (and no file system likes such a tar)
# recipe fields: None means not set; the manifest records them only when set
RECIPE_FIELDS = ("preset", "interpolation", "normalize", "prompts", "box_jitter", "box_rule")


class BuildError(MedprepError, RuntimeError):
    """A build that cannot proceed (an existing build in the way, another build running, colliding keys)."""


class InputsFailed(BuildError):
    """The build ran but publishes nothing: too many inputs failed (``--strict``, ``--max-failures``), none was
    converted, or a split came out empty."""

    exit_status = 1


def parse_size(value: int | str, option: str = "--shard-bytes") -> int:
    """Bytes from an int or a size text ('1GB', '500MB', '2GiB', '1G', '123'), read by ``dask.utils.parse_bytes``;
    a ``ValueError`` names ``option`` for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(str(value)))
    except (ValueError, OverflowError, TypeError):
        raise ValueError(f"{option} {value!r}: expected a size in bytes like 500MB, 2GiB, 1G or 1000000") from None


def read_split_file(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Read an authors' split JSON ``{"train": [...], "valid": [...], "test": [...]}`` (lists of file names).

    Returns (stem -> split, ignored) where ``ignored`` holds the lists under keys other than train/valid/test
    (the released DSB and TNBC files carry a stray ``"p"`` list), to be reported. A ``ValueError`` says what is
    wrong with a missing file, one that is not JSON, or one of another shape (naming the key).
    """
    path = Path(path)
    shape = '{"train": ["a.png", ...], "valid": [...], "test": [...]}'
    try:
        doc = json.loads(read_regular(path))
    except FileNotFoundError:
        raise ValueError(f"--split-file {path} does not exist; expected a JSON file {shape}") from None
    except OSError as e:
        raise ValueError(f"--split-file {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise ValueError(f"--split-file {path} is not JSON ({e}); expected {shape}") from None
    if not isinstance(doc, dict) or not any(k in doc for k in SPLITS):
        found = f"the keys {list(doc)[:5]}" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise ValueError(f"--split-file {path}: expected {shape}, found {found}")
    mapping: dict[str, str] = {}
    ignored: dict[str, list[str]] = {}
    for split, names in doc.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            if isinstance(names, list):
                what = "a list holding " + ", ".join(sorted({type(n).__name__ for n in names if not isinstance(n, str)}))
            else:
                what = f"a JSON {'null' if names is None else type(names).__name__}"
            raise ValueError(f"--split-file {path}: {split!r} must be a list of file names like [\"a.png\", ...], "
                             f"found {what}")
        stems = [PurePosixPath(n).name.rsplit(".", 1)[0] for n in names]
        if split not in SPLITS:
            ignored[split] = stems
            continue
        for s in stems:
            if s in mapping and mapping[s] != split:
                raise ValueError(f"--split-file {path}: {s} is listed in both {mapping[s]} and {split}")
            mapping[s] = split
    return mapping, ignored


@dataclass(frozen=True)
class FailureLimit:
    """``--max-failures``: how many inputs may fail in a build that still publishes. A count (``5``), a fraction of
    the inputs found (``2%``), or the default (``None``): only failures that mean the parameters are wrong stop
    a build (stage ``params``, e.g. a sample larger than ``--shard-bytes``). A build that converts nothing never
    publishes."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, value: FailureLimit | int | str | None) -> FailureLimit:
        """From ``None``, a count (``5``, ``"5"``) or a percentage (``"2%"``, ``"0.5%"``)."""
        if value is None or isinstance(value, FailureLimit):
            return value or cls()
        text = str(value).strip()
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if 0 <= percent <= 100:
                    return cls(percent=percent)
            elif not isinstance(value, (bool, float)) and int(text) >= 0:
                return cls(count=int(text))
        except ValueError:
            pass
        raise ValueError(f"--max-failures {value!r}: expected a count of inputs (like 5) or a percentage of the "
                         f"inputs found (like 2%)")

    def exceeded(self, failures: list[dict[str, Any]], inputs: int) -> bool:
        """Whether ``failures`` (failure rows of a build of ``inputs`` inputs) are more than this limit allows."""
        if self.count is not None:
            return len(failures) > self.count
        if self.percent is not None:
            return len(failures) > self.percent / 100 * inputs
        return any(f.get("stage") == "params" for f in failures)

    def __str__(self) -> str:
        if self.count is not None:
            return f"--max-failures {self.count}"
        if self.percent is not None:
            return f"--max-failures {self.percent:g}%"
        return "the default --max-failures (no failure caused by the parameters)"


@dataclass(frozen=True)
class BuildParams:
    """Every parameter a build's bytes depend on (recorded in the manifest).

    Construction normalises (the dataset's registered name, tuples, ``str`` paths, converter options without
    ``None`` values, read by their declared types) and validates every field, the converter options and the modality table included, raising
    ``ValueError`` with the option to fix.

    Recipe fields: ``preset`` (the name; :meth:`of` fills the parameters not given from it), ``interpolation``
    (the image's; default area when shrinking, linear when enlarging), and, recorded for the readers without
    changing any byte, ``normalize`` (the pixel normalisation the model trains with), ``prompts`` (the prompt field
    loaders give), ``box_jitter`` (its box perturbation bound) and ``box_rule`` (how its whole-object box is computed,
    ``medprep.manifests.pixels.BOX_RULES``).

    ``max_pixels``: the most pixels one image (voxels one volume) may declare in its header; larger inputs are
    failures, refused before decoding.
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
    shard_bytes: int | str = 1_000_000_000
    shard_samples: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    interpolation: str | None = None
    normalize: str | None = None
    prompts: str | None = None
    box_jitter: int | None = None
    box_rule: str | None = None
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        norm = {"dataset": dataset_name(self.dataset),  # DRIVE, Kvasir_SEG: the registered spelling
                "patch_sizes": tuple(int(p) for p in self.patch_sizes), "shard_bytes": parse_size(self.shard_bytes),
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
        if self.shard_bytes < 1 or (self.shard_samples is not None and self.shard_samples < 1):
            raise ValueError(f"--shard-bytes and --shard-samples must be positive, got {self.shard_bytes} and "
                             f"{self.shard_samples}")
        if self.shard_bytes > SHARD_BYTES_MAX:
            raise ValueError(f"--shard-bytes {self.shard_bytes}: at most {SHARD_BYTES_MAX >> 30} GiB; shards of a few "
                             f"hundred MB to a few GB suit webdataset readers")
        if self.split_file is not None:
            read_split_file(self.split_file)  # missing, not JSON or of the wrong shape: said before any work
        if self.modality_map not in MAP_NAMES and not is_table_file(self.modality_map):
            raise ValueError(f"--modality-map {self.modality_map!r}: expected one of {', '.join(MAP_NAMES)} or a "
                             f"FILE.json of your own ({{\"ct\": 0, \"mr\": 1, ...}})")
        # the converter options as their declared types read them (-o texts included): recorded as such
        object.__setattr__(self, "options", coerced(converter_class(self.dataset).Options, self.options, self.dataset))
        if self.modality_map not in NAME_MAPS:
            # the table read once (a user's file: validated here, its content travels with the parameters)
            object.__setattr__(self, "_modality_ids", modality_ids(self.modality_map))
            if self.converter().modality is not None:  # None: each input's own (medsam-npz's file-name prefixes)
                self.sample_modality_id(self.converter(), "")  # unknown dataset, option or modality
        else:
            self.converter()  # unknown dataset or option
        choices = {"preset": tuple(PRESETS), "interpolation": tuple(INTERPOLATIONS),
                   "normalize": (*NORMALIZATIONS, *PER_IMAGE_NORMALIZATIONS), "prompts": PROMPT_FIELDS,
                   "box_rule": BOX_RULES}
        for name, allowed in choices.items():
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                raise ValueError(f"--{name} {getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if self.box_rule == "truncate" and self.resize != "longest":
            raise ValueError(f"--box-rule truncate scales the original box by --size / max(H, W), the frame of "
                             f"--resize longest, not of --resize {self.resize}: use --resize longest or --box-rule "
                             f"mask")
        if self.box_jitter is not None and (not isinstance(self.box_jitter, int) or self.box_jitter < 0):
            raise ValueError(f"--box-jitter {self.box_jitter!r}: expected a whole number of pixels >= 0")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"--max-pixels {self.max_pixels!r}: expected a whole number of pixels >= 1 (the most one "
                             f"decoded image, or voxels one volume, may hold; default {MAX_PIXELS})")

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
        that gives each sample its own id, or a converter that reads each input's modality (``sample_modality_id``)."""
        if self.modality_map in NAME_MAPS or self.converter().modality is None:
            return None
        return self.sample_modality_id(self.converter(), "")

    def sample_modality_id(self, conv: Converter, sample_id: str, modality: str | None = None) -> int:
        """The modality id of sample ``sample_id`` of modality ``modality`` (default: the converter's) in
        ``modality_map``, or for a per-sample map (``esp-medsam-released``) the id of its ESP-MedSAM file name."""
        if self.modality_map in NAME_MAPS:
            return modality_id(modality or conv.modality, self.modality_map, conv.esp_file_id(sample_id))
        return modality_id(modality or conv.modality, self.modality_map, ids=self.__dict__["_modality_ids"])

    @property
    def modality_map_label(self) -> str:
        """``modality_map`` as samples record it: a table's name, or a user's table file by its file name."""
        return Path(self.modality_map).name if is_table_file(self.modality_map) else self.modality_map

    def recorded(self, split_file_sha: str | None) -> dict[str, Any]:
        """The parameters as the manifest records them (the split file by name and sha256)."""
        d = asdict(self)
        d["patch_sizes"] = list(self.patch_sizes)
        d["split_file"] = {"name": Path(self.split_file).name, "sha256": split_file_sha} if self.split_file else None
        d["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.options.items()}
        if is_table_file(self.modality_map):  # a user's table: by file name, with the ids it gave
            d["modality_map"] = self.modality_map_label
            d["modality_table"] = dict(self.__dict__["_modality_ids"])
        d["png_codec"] = PNG_CODEC
        for name in RECIPE_FIELDS:
            if d[name] is None:
                del d[name]
        return d


__all__ = ["SHARD_BYTES_MAX", "SIZE_RANGE", "SPLIT_RULES", "BuildError", "BuildParams", "FailureLimit", "InputsFailed",
           "parse_size", "read_split_file"]
