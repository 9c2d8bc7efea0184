"""What every converter shares: the record of one input sample, the converter interface, the registry."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from medprep.manifests.modalities import MODALITY_MAPS, modality_id

from ..imaging import Box, ConversionError, decode, decode_mask_boxes, unbox
from ..tree import SourceTree, natural_key, stem
from .options import NoOptions, parse


@dataclass(frozen=True)
class Record:
    """One input sample as found in the download: its id, its files and what the layout tells about it."""

    source_id: str
    image: str
    masks: tuple[str, ...]
    split: str | None = None  # official split, when the layout has one
    group: str | None = None  # video sequence / patient, for --group-by
    extras: dict[str, str] = field(default_factory=dict)  # name -> file, written as <name>.png (e.g. DRIVE fov)
    info: dict[str, Any] = field(default_factory=dict)  # extra meta fields (e.g. BUSI class)
    modality: str | None = None  # this input's own modality (medsam-npz file-name prefixes); None: the converter's

    def files(self) -> list[str]:
        return [self.image, *self.masks, *self.extras.values()]

    def relative_to(self, prefix: str) -> "Record":
        """The record with ``prefix`` (a folder path ending in '/') removed from its file paths."""
        cut = len(prefix)
        return replace(self, image=self.image[cut:], masks=tuple(m[cut:] for m in self.masks),
                       extras={k: v[cut:] for k, v in self.extras.items()})


@dataclass
class Loaded:
    """Decoded content of one record, before resizing."""

    image: np.ndarray
    mask: np.ndarray  # bool, same height/width as image
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # bool masks
    inst: np.ndarray | None = None  # uint16 instance map; with one, ``mask`` must be ``inst > 0`` (mask.png is cut
    # from the resized map: a nearest-neighbour resize samples both at the same pixels)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """An input that could not be turned into a sample."""

    source_id: str
    files: tuple[str, ...]
    reason: str
    stage: str = "discover"

    def row(self) -> dict[str, Any]:
        return {"source_id": self.source_id, "files": list(self.files), "reason": self.reason, "stage": self.stage}


class Converter:
    """A dataset in its official download layout. Subclasses describe it; ``medprep.prep.build`` does the rest.

    Class attributes: ``name`` (the --dataset value), ``title``, ``modality``, ``layout`` (expected files, shown by
    ``medprep datasets`` and in errors), ``marker`` (a glob that locates the dataset root), ``split_rule``
    ('official', '811' or 'test'), ``valid_from_train`` (fraction of the official training split carved out as
    validation when the download has no validation split), ``Options`` (a frozen dataclass of typed options, see
    ``options.py``; an instance's values are ``self.opts``), ``domain`` ('source' or 'unseen': the papers' training
    or test-only domain; None for generic converters and combinations), ``esp_name`` (the name of its
    ``<name>_data_split.json`` in the ESP-MedSAM repository, when it differs from ``name``).

    Where it comes from (``medprep datasets NAME`` shows them; the registry battery requires them): ``homepage``
    (the official page to download it from), ``license`` (its terms in a line; "see the official page" where they
    are not stated plainly) and ``citation`` (the paper to cite). ``src_relative``: the options name files relative
    to ``--src`` (the generic converters), so a recipe records ``--src`` itself rather than the dataset's folder.
    ``side_files``: file-name globs of files beside its inputs that it leaves alone on purpose (the other
    annotator's maps), besides the shared ``medprep.prep.unclaimed.SIDE_FILES``; any other file in the folders of
    its inputs becomes a failure "unexpected file".

    Fake data (tests, demo): ``fake(root, seed=0, **sizes) -> folder`` writes a small copy of the download with its
    format quirks (it imports ``medprep.prep.synthetic`` inside the function only); built with ``fake_options`` and
    the default split rule, its default output has ``fake_counts`` samples per split and ``fake_failures`` failures.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    modality: ClassVar[str]
    layout: ClassVar[str]
    marker: ClassVar[str]
    split_rule: ClassVar[str] = "811"
    valid_from_train: ClassVar[float] = 0.0
    Options: ClassVar[type] = NoOptions
    domain: ClassVar[str | None] = None
    esp_name: ClassVar[str | None] = None
    homepage: ClassVar[str] = ""
    license: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    src_relative: ClassVar[bool] = False
    side_files: ClassVar[tuple[str, ...]] = ()
    fake: ClassVar[Callable[..., Path] | None] = None
    fake_counts: ClassVar[dict[str, int]] = {}
    fake_failures: ClassVar[int] = 0
    fake_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any):
        self.opts: Any = parse(self.Options, options, self.name)

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        """Find every sample (and every input that cannot become one) in the download."""
        raise NotImplementedError

    def load(self, blobs: dict[str, bytes], rec: Record) -> Loaded:
        """Decode one record from its files' bytes. Default: image + OR of its masks + binary extras."""
        image = decode(blobs[rec.image], rec.image)
        return Loaded(image, self.merge_masks(blobs, rec.masks, image.shape[:2]),
                      extras={k: self.read_mask(blobs, p, image.shape[:2]) for k, p in rec.extras.items()})

    def samples(self, blobs: dict[str, bytes], rec: Record) -> Iterator[tuple[str, Loaded]]:
        """The samples one record yields as (source id, content). Default: one sample, ``load``; converters of
        multi-sample inputs (volumes cut into slices) override this and name each sample, e.g. ``<id>_z0042``."""
        yield rec.source_id, self.load(blobs, rec)

    def split_file_id(self, source_id: str) -> str:
        """The id the authors' split files use for ``source_id`` (their renamed file stems)."""
        return source_id

    def esp_file_id(self, source_id: str) -> str:
        """The sample's file stem in the ESP-MedSAM layout (``image_1024/<stem>.png``): its split-file id, with dots
        and slashes made ``_`` (the authors' loader cuts a name at its first dot). The ``esp-medsam-released``
        modality id is computed from it."""
        return re.sub(r"[./\\]", "_", self.split_file_id(source_id))

    # helpers for subclasses -------------------------------------------------------------------------------------

    @staticmethod
    def read_mask(blobs: dict[str, bytes], path: str, hw: tuple[int, int]) -> np.ndarray:
        """The binarised mask at ``path``, which must be of size ``hw``."""
        return unbox(*Converter.read_mask_box(blobs, path, hw), hw)

    @staticmethod
    def read_mask_box(blobs: dict[str, bytes], path: str, hw: tuple[int, int]) -> tuple[Box, np.ndarray]:
        """``read_mask`` as (the box of the foreground, the bool mask inside it): see ``binarize_box``."""
        return next(Converter.read_mask_boxes(blobs, [path], hw))

    @staticmethod
    def read_mask_boxes(blobs: dict[str, bytes], paths: Sequence[str],
                        hw: tuple[int, int]) -> Iterator[tuple[Box, np.ndarray]]:
        """``read_mask_box`` of each path in order, decoded together (see ``decode_mask_boxes``); an error is raised
        when the iteration reaches its file."""
        for path, (mask_hw, box, fg) in zip(paths, decode_mask_boxes([(blobs[p], p) for p in paths])):
            if mask_hw != hw:
                raise ConversionError(f"{path}: mask is {mask_hw[1]}x{mask_hw[0]} but the image is {hw[1]}x{hw[0]}")
            yield box, fg

    @classmethod
    def merge_masks(cls, blobs: dict[str, bytes], paths: Sequence[str], hw: tuple[int, int]) -> np.ndarray:
        """OR of the binarised masks at ``paths`` (all of size ``hw``; none gives an empty mask), each merged at
        the cost of its foreground's box."""
        out = None
        for box, fg in cls.read_mask_boxes(blobs, paths, hw):
            if out is None:
                out = unbox(box, fg, hw)
            else:
                out[box] |= fg
        return np.zeros(hw, bool) if out is None else out

    def root(self, tree: SourceTree) -> str:
        """Prefix (possibly '') of the dataset root inside the tree."""
        return tree.find_root(self.marker, self.name)


def at(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


REGISTRY: dict[str, type[Converter]] = {}
DOMAINS = ("source", "unseen")


def register(cls: type[Converter]) -> type[Converter]:
    """Class decorator adding a converter to the registry under its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


def load_all() -> None:
    """Import every converter module of this package (registering them)."""
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name not in ("base", "options", "pairing"):
            importlib.import_module(f"{__package__}.{mod.name}")


def registered(domain: str | None = None) -> dict[str, type[Converter]]:
    """Every registered converter by name (sorted), or only those of ``domain`` ('source' or 'unseen')."""
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"domain {domain!r}: expected one of {', '.join(DOMAINS)}")
    load_all()
    return {n: c for n, c in sorted(REGISTRY.items()) if domain is None or c.domain == domain}


def _folded(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def dataset_name(name: str) -> str:
    """The registered name ``--dataset name`` means: ``name`` itself, or the one it equals ignoring case, spaces and
    ``_`` for ``-`` (``DRIVE``, ``Kvasir_SEG``). Raises ValueError with the closest names (difflib) otherwise."""
    load_all()
    if name in REGISTRY:
        return name
    folded = {_folded(n): n for n in REGISTRY}
    if _folded(name) in folded:
        return folded[_folded(name)]
    close = [folded[c] for c in difflib.get_close_matches(_folded(name), list(folded), n=3, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"unknown --dataset {name!r}{hint} (known: {', '.join(sorted(REGISTRY))}; "
                     f"'medprep datasets' describes each)")


def converter_class(name: str) -> type[Converter]:
    """The registered converter of ``--dataset name`` (any spelling :func:`dataset_name` accepts)."""
    return REGISTRY[dataset_name(name)]


def looks_like(tree: SourceTree, but_not: str, limit: int = 3) -> list[str]:
    """The datasets whose markers match ``tree`` (at its root or up to three folders below), other than
    ``but_not``: the most specific marker (longest literal text) first. Generic converters (no ``domain``) match
    anything and are left out."""
    load_all()
    found = [(len(re.sub(r"[*?]|\[[^]]*]", "", c.marker)), n) for n, c in REGISTRY.items()
             if c.domain is not None and n != but_not and tree.locate(c.marker) is not None]
    return [n for _, n in sorted(found, key=lambda x: (-x[0], x[1]))[:limit]]


def get_converter(name: str, /, **options: Any) -> Converter:  # positional: converters take a "name" option
    """The converter of ``--dataset name`` with ``options``, validated by its ``Options`` declaration."""
    return converter_class(name)(**options)


def make_fake(name: str, root: str | Path, seed: int = 0, **sizes: Any) -> Path:
    """Write the fake data of ``--dataset name`` under ``root`` (its converter's ``fake``); returns its folder."""
    cls = converter_class(name)
    if cls.fake is None:
        raise ValueError(f"--dataset {name} has no fake-data maker: define fake() (and fake_counts) on "
                         f"{cls.__module__}.{cls.__qualname__}")
    return cls.fake(Path(root), seed=seed, **sizes)


def esp_split_name(dataset: str) -> str:
    """The ESP-MedSAM split-file name of ``dataset`` (``<name>_data_split.json``); its own name by default."""
    load_all()
    cls = REGISTRY.get(dataset)
    return (cls.esp_name if cls is not None else None) or dataset


__all__ = ["Converter", "DOMAINS", "Failure", "Loaded", "Record", "REGISTRY", "MODALITY_MAPS", "at",
           "converter_class", "dataset_name", "esp_split_name", "get_converter", "load_all", "looks_like", "make_fake",
           "modality_id", "natural_key", "register", "registered", "stem"]
