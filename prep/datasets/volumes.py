"""CT / MR volumes (NIfTI, MHA, NRRD, DICOM series) with label volumes, cut into 2D slices.

Pairing: the nnU-Net layout (``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``), the Medical Segmentation
Decathlon layout (``imagesTr/<case>.nii.gz`` + ``labelsTr/<case>.nii.gz``), or explicit ``-o images=GLOB
-o labels=PATTERN`` (placeholders ``{stem}``: file name without the volume suffix, or the DICOM series
folder's name; ``{case}``: stem without an nnU-Net ``_0000`` channel suffix; ``{name}``, ``{dir}``, ``{parent}``).
``.dcm`` files matched by ``images`` (every file, with ``-o dicom=true``) are grouped by folder into one series each.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Literal

import numpy as np

from ..tree import LayoutError, SourceTree
from ..volume_io import (
    AXES, CT_PRESETS, DEFAULT_PRESET, LABEL_MODES, NIFTI_SUFFIXES, READERS, SITK_SUFFIXES, PercentileClip, Window,
    axis_name, canonical, check_grids, cut, label_values, read_volume, stack, volume_suffix,
)
from .base import Converter, Failure, Loaded, Record, at, register
from .options import DatasetName, option
from .pairing import pair_by_name

INTENSITY_RULES = ("window", "percentile")
_NNUNET = re.compile(r"(.+)_(\d{4})$")


@dataclass(frozen=True)
class SeriesRecord(Record):
    """A record whose image is a DICOM series: ``image`` names the series folder, ``parts`` lists its files."""

    parts: tuple[str, ...] = ()

    def files(self) -> list[str]:
        return [*self.parts, *self.masks]


def _window(spec: Any, where: str) -> Window:
    """A window from a preset name or [level, width]."""
    if isinstance(spec, str):
        return Window.named(spec)
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        try:
            return Window(float(spec[0]), float(spec[1]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: expected [level, width] of finite numbers, got {spec!r} ({e})") from None
    raise ValueError(f"{where}: expected a preset ({', '.join(CT_PRESETS)}) or [level, width], got {spec!r}")


@dataclass(frozen=True, kw_only=True)
class SliceOptions:
    """The options every slice-producing converter shares (volumes, medsam-npz)."""

    name: DatasetName = option(help="dataset name in keys and manifest; give each dataset its own")
    modality: str = option(help="a modality of the table (ct, mr, dermoscopy, ...)", flag="-o modality=NAME")
    multilabel: Literal[LABEL_MODES] = option("binary", help="binary (label > 0) or each (one sample per label)")
    min_object_pixels: int = option(0, ge=0, help="remove 8-connected objects under N pixels per slice first")


def _volume_id(path: str) -> str:
    name = PurePosixPath(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


@register
class Volumes(Converter):
    name = "volumes"
    title = "CT / MR volumes with label volumes, cut into 2D slices (-o modality=ct|mr required)"
    modality = "?"  # given with -o modality=
    marker = "imagesTr/*"
    src_relative = True  # its globs are relative to --src
    layout = ("imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz (nnU-Net), imagesTr/<case>.nii.gz + "
              "labelsTr/<case>.nii.gz (MSD), or -o images=GLOB -o labels=PATTERN (placeholders {stem}, {case}, "
              "{name}, {dir}, {parent}); .nii, .nii.gz, .mha, .nrrd, folders of .dcm")
    fake_counts = {"train": 18, "test": 9}
    fake_options = {"modality": "ct"}
    side_files = ("*_[0-9][0-9][0-9][0-9].*",)  # nnU-Net's other channels of a case (one is chosen, -o channel)

    @dataclass(frozen=True, kw_only=True)
    class Options(SliceOptions):
        name: DatasetName = option(DatasetName("volumes"),
                                   help="dataset name in keys and manifest; give each volume dataset its own")
        modality: str = option(help="ct or mr (any modality of the table)", flag="-o modality=ct|mr")
        images: str | None = option(None, help="image glob (with labels): explicit pairing")
        labels: str | None = option(None, help="label pattern ({stem}, {case}, {name}, {dir}, {parent})")
        axis: str = option("axial", help="axial, coronal or sagittal (or z, y, x)")
        intensity: Literal[INTENSITY_RULES] | None = option(None, help="window (default for ct) or percentile "
                                                                       "(default otherwise)")
        preset: str | None = option(None, help=f"CT window preset ({', '.join(CT_PRESETS)})")
        window_level: float | None = option(None, help="CT window level (HU)")
        window_width: float | None = option(None, help="CT window width (HU)")
        label_windows: dict | None = option(None, help='{label: preset or [level, width]}, with multilabel=each')
        reader: Literal[READERS] = option("auto", help="auto, nibabel or sitk")
        channel: int = option(0, ge=0, help="image channel: nnU-Net _000N suffix or index of a 4D image")
        label_channel: int | None = option(None, ge=0, help="channel of a 4D label volume (refused without it)")
        dicom: bool = option(False, help="every file matched by images is a DICOM slice (files without .dcm)")

        @property
        def intensity_rule(self) -> str:
            """The intensity rule: as given, else window for ct and percentile otherwise."""
            return self.intensity or ("window" if self.modality == "ct" else "percentile")

        def __post_init__(self) -> None:
            axis_name(self.axis)
            if bool(self.images) != bool(self.labels):
                raise ValueError("-o images=GLOB and -o labels=PATTERN go together")
            explicit = self.window_level is not None or self.window_width is not None
            if self.intensity_rule != "window" and (explicit or self.preset or self.label_windows):
                raise ValueError("CT window options (preset, window_level/width, label_windows) need -o "
                                 "intensity=window")
            if explicit and self.preset:
                raise ValueError("give either -o preset=NAME or -o window_level=L -o window_width=W, not both")
            if self.label_windows and self.multilabel != "each":
                raise ValueError("-o label_windows applies per label: it needs -o multilabel=each")

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.opts
        self.name, self.modality = o.name, o.modality
        self.axis = axis_name(o.axis)
        self.intensity = o.intensity_rule
        base = Window.named(o.preset or DEFAULT_PRESET)
        self.window = Window(float(base.level if o.window_level is None else o.window_level),
                             float(base.width if o.window_width is None else o.window_width))
        self.label_windows = {int(k): _window(v, f"-o label_windows {k}") for k, v in (o.label_windows or {}).items()}

    # discovery ------------------------------------------------------------------------------------------------

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        if self.opts.images:
            records, failures = self._explicit(tree)
        else:
            records, failures = self._decathlon(tree)
        if self.opts.reader != "nibabel":
            return records, failures
        nifti = [not isinstance(r, SeriesRecord) and all(volume_suffix(f) in NIFTI_SUFFIXES for f in r.files())
                 for r in records]
        failures += [Failure(r.source_id, tuple(r.files()), "-o reader=nibabel reads NIfTI only; use reader=sitk or "
                             "reader=auto for MHA, NRRD and DICOM") for r, ok in zip(records, nifti) if not ok]
        return [r for r, ok in zip(records, nifti) if ok], failures

    def _decathlon(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        """nnU-Net (``_0000`` channel suffix) or MSD pairing of imagesTr/ and labelsTr/."""
        root = self.root(tree)
        self._check_declared_modality(tree, root)
        files = tree.glob(at(root, "imagesTr/*"))
        failures = [Failure(PurePosixPath(f).name, (f,), f"not a volume file: expected {', '.join(SITK_SUFFIXES)}")
                    for f in files if not volume_suffix(f)]
        vols = [f for f in files if volume_suffix(f)]
        # nnU-Net: every image ends in a channel suffix and no label carries an image's own name (MSD ids may
        # end in 4 digits too)
        nnunet = (bool(vols) and all(_NNUNET.fullmatch(_volume_id(f)) for f in vols)
                  and not any(tree.exists(at(root, f"labelsTr/{PurePosixPath(f).name}")) for f in vols))
        if nnunet:
            channel = f"{self.opts.channel:04d}"
            vols = [f for f in vols if _NNUNET.fullmatch(_volume_id(f)).group(2) == channel]  # type: ignore[union-attr]

        def case(img: str) -> str:
            vid = _volume_id(img)
            return _NNUNET.fullmatch(vid).group(1) if nnunet else vid  # type: ignore[union-attr]

        records, f = pair_by_name(tree, vols, lambda img: [at(root, f"labelsTr/{case(img)}{volume_suffix(img)}")],
                                  id_of=case, mask_glob=at(root, "labelsTr/*"))
        return records, failures + f

    def _check_declared_modality(self, tree: SourceTree, root: str) -> None:
        """Refuse a modality that contradicts the dataset.json of an MSD / nnU-Net dataset."""
        path = at(root, "dataset.json")
        if not tree.exists(path):
            return
        try:
            doc = json.loads(tree.read(path))
        except ValueError as e:
            raise LayoutError(f"{path}: not valid JSON ({e})") from None
        names = doc.get("channel_names") or doc.get("modality") or {}
        declared = str(names.get(str(self.opts.channel), "")) if isinstance(names, dict) else ""
        is_ct = declared.upper() == "CT"
        is_mr = bool(re.search(r"MR|T1|T2|FLAIR|ADC|DWI", declared.upper()))
        if (is_ct and self.modality != "ct") or (is_mr and self.modality == "ct"):
            raise LayoutError(f"{path} declares channel {self.opts.channel} as {declared!r} but -o modality="
                              f"{self.modality}; pass the modality of the data")

    def _explicit(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        """-o images=GLOB -o labels=PATTERN; .dcm files are grouped by folder into series."""
        pattern = str(self.opts.labels)
        label_glob = None if "{dir}" in pattern else re.sub(r"\{[^}]*\}", "*", pattern)
        label_like = set(tree.glob(label_glob)) if label_glob else set()
        files = [f for f in tree.glob(str(self.opts.images)) if f not in label_like]  # labels are never images
        if not files:
            raise LayoutError(f"-o images={self.opts.images} matches nothing under {tree.label}; "
                              f"found {tree.top_level()}")
        series: dict[str, list[str]] = {}
        entries, failures = [], []
        for f in files:
            if self.opts.dicom or f.lower().endswith(".dcm"):
                series.setdefault(str(PurePosixPath(f).parent), []).append(f)
            elif volume_suffix(f):
                entries.append(f)
            else:
                failures.append(Failure(PurePosixPath(f).name, (f,),
                                        f"not a volume file: expected {', '.join(SITK_SUFFIXES)} or .dcm"))
        entries += list(series)

        def id_of(entry: str) -> str:
            return PurePosixPath(entry).name if entry in series else _volume_id(entry)

        def label_of(entry: str) -> list[str]:
            p, vid = PurePosixPath(entry), id_of(entry)
            case = _NNUNET.fullmatch(vid)
            fields = {"stem": vid, "case": case.group(1) if case else vid, "name": p.name, "parent": p.parent.name,
                      "dir": str(p.parent) if str(p.parent) != "." else ""}
            try:
                return [pattern.format(**fields)]
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"-o labels={pattern}: unknown placeholder {e}; use "
                                 f"{', '.join('{' + k + '}' for k in fields)}") from None

        records, f = pair_by_name(tree, entries, label_of, mask_glob=label_glob, id_of=id_of)
        records = [SeriesRecord(r.source_id, r.image, r.masks, parts=tuple(series[r.image])) if r.image in series
                   else r for r in records]
        return records, failures + f

    # conversion -----------------------------------------------------------------------------------------------

    def samples(self, blobs: dict[str, bytes], rec: Record) -> Iterator[tuple[str, Loaded]]:
        """Read image and label volume, check their grids, reorient to RAS and yield the slices with foreground."""
        o = self.opts
        parts = rec.parts if isinstance(rec, SeriesRecord) else (rec.image,)
        image = read_volume({p: blobs[p] for p in parts}, rec.image, o.reader, o.channel)
        label_path = rec.masks[0]
        label = read_volume({label_path: blobs[label_path]}, label_path, o.reader, o.label_channel)
        source_orientation = image.axcodes
        image, label = canonical(image), canonical(label)
        check_grids(image, label, rec.image, label_path)
        images, spacing = stack(image, self.axis)
        labels, _ = stack(label, self.axis)
        labels = label_values(labels, label_path)
        if self.intensity == "window":
            def image_of(z: int, v: int | None) -> tuple[np.ndarray, dict[str, Any]]:
                w = self.label_windows.get(v, self.window) if v is not None else self.window
                return w(images[z]), {"intensity": w.info()}
        else:
            clip = PercentileClip.of(image.data, rec.image)

            def image_of(z: int, v: int | None) -> tuple[np.ndarray, dict[str, Any]]:
                return clip(images[z]), {"intensity": clip.info()}

        info = {"volume_id": rec.source_id, "slice_axis": self.axis, "spacing": spacing, "orientation": "RAS",
                "source_orientation": source_orientation}
        yield from cut(rec.source_id, labels, image_of, letter=AXES[self.axis][0], mode=o.multilabel,
                       min_object_pixels=o.min_object_pixels, info=info)

    @staticmethod
    def fake(root: Path, seed: int = 0, **variant: Any) -> Path:
        """Three CT phantoms in the MSD layout, stored in LPS order, with dataset.json; ``variant`` picks other
        layouts, formats, orientations and modalities (``synthetic3d.make_volumes``). The phantoms are fixed:
        ``seed`` is unused."""
        from ..synthetic3d import make_volumes

        return make_volumes(root, **variant)
