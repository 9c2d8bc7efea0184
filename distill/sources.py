"""Image sources for the teacher cache: a built medical dataset, SA-1B tars in their original form, a folder.

Every source has a fixed, deterministic list of ``keys`` and loads sample ``i`` as an RGB uint8 image plus the
valid (not padded) pixel region. Tar members are read in place through an index of their offsets
(``medprep.manifests``), never extracted.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Protocol, TypeVar

import numpy as np
from PIL import Image

from medprep.manifests import MemberIndex, fs_and_path, join, open_dataset, sha256_bytes
from medprep.manifests.features import in_fraction
from medprep.manifests.pixels import safe_key

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SA1B_MEMBER = re.compile(r"^sa_(\d+)\.jpg$")
SA1B_TAR = re.compile(r"^sa_\d+\.tar$")
MEDICAL_ENTRIES = ("image.png", "meta.json")
T = TypeVar("T")


class Source(Protocol):
    """What the cache pipeline needs from a source."""

    keys: list[str]

    def load(self, i: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        """Sample ``i``: RGB uint8 ``(H, W, 3)`` and the valid ``(h, w)`` pixel region (None: whole image)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description, enough to reopen the source (:func:`open_source`) and to tell it apart."""
        ...


def decode_rgb(data: bytes, where: str = "image") -> np.ndarray:
    """Decode image bytes to RGB uint8 ``(H, W, 3)``; a ``ValueError`` naming ``where`` when they are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        why = str(e).split(" <_io.BytesIO")[0]  # PIL names the buffer, not the file
        raise ValueError(f"{where} is not a decodable image ({len(data)} bytes: {why})") from None


def keys_sha256(keys: list[str]) -> str:
    return sha256_bytes("\n".join(keys).encode())


class _Indexes(Generic[T]):
    """Tar indexes built once per process, on first use (thread-safe)."""

    def __init__(self, build: Callable[[str], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._indexes: dict[str, T] = {}

    def get(self, name: str) -> T:
        with self._lock:
            if name not in self._indexes:
                self._indexes[name] = self._build(name)
            return self._indexes[name]


class MedicalSource:
    """A dataset written by ``medprep build``, read through its manifest; keys are the shard keys."""

    def __init__(self, root: str, split: str | None = None):
        self.dataset = open_dataset(root)
        self.split = split
        rows = list(self.dataset.samples(split))
        if not rows:
            raise ValueError(f"{root} has no samples in split {split!r}: splits present are {self.dataset.manifest.splits()}")
        self.keys = [r["key"] for r in rows]
        self._shard = [r["shard"] for r in rows]
        self._indexes = _Indexes(self.dataset.index_shard)

    def _fetch(self, i: int, entries: tuple[str, ...]) -> dict[str, bytes]:
        shard, key = self._shard[i], self.keys[i]
        index = self._indexes.get(shard)
        raw = self.dataset.fetch(shard, index, index.position(key), entries)
        missing = [e for e in entries if e not in raw]
        if missing:
            raise ValueError(f"{self.dataset.where(shard)}: sample {key} lacks {', '.join(missing)}; run "
                             f"'medprep verify {self.dataset.root}'")
        return raw

    def _where(self, i: int, entry: str) -> str:
        return f"{self.dataset.where(self._shard[i])}: {self.keys[i]}.{entry}"

    def load_mask(self, i: int) -> np.ndarray:
        """The ground-truth mask of sample ``i``: bool ``(H, W)`` (``mask.png``)."""
        data = self._fetch(i, ("mask.png",))["mask.png"]
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("L")) > 0
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{self._where(i, 'mask.png')} is not a decodable image ({e})") from None

    def load_meta(self, i: int) -> dict[str, Any]:
        """Sample ``i``'s ``meta.json``."""
        return json.loads(self._fetch(i, ("meta.json",))["meta.json"])

    def load(self, i: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        raw = self._fetch(i, MEDICAL_ENTRIES)
        image = decode_rgb(raw["image.png"], self._where(i, "image.png"))
        meta = json.loads(raw["meta.json"])
        valid = meta.get("valid_hw")
        return image, (int(valid[0]), int(valid[1])) if valid else None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "medical", "url": self.dataset.root, "dataset": self.dataset.name, "split": self.split,
            "manifest_sha256": self.dataset.manifest_sha256, "generation": self.dataset.generation,
            "keys_sha256": keys_sha256(self.keys),
        }


def _subset_names(subset_file: str) -> set[str]:
    fs, path = fs_and_path(subset_file)
    with fs.open(path, "rt") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    return {os.path.basename(ln).removeprefix("sa1b-").removesuffix(".jpg") for ln in lines}


class SA1BSource:
    """SA-1B in its original form: ``sa_NNNNNN.tar`` files holding ``sa_N.jpg`` (+ ``sa_N.json``).

    Keys are ``sa1b-sa_N``, ordered by tar name then N. ``fraction`` keeps a deterministic, seeded subset
    (each image is kept with probability ``fraction``, decided from its key alone); ``subset_file`` keeps the
    images listed in a text file (one ``sa_N``, ``sa_N.jpg`` or ``sa1b-sa_N`` per line).
    """

    def __init__(self, tars: str | list[str], fraction: float | None = None, seed: int = 0,
                 subset_file: str | None = None):
        self.tars = _list_tars(tars)
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
        self.fraction, self.seed, self.subset_file = fraction, seed, subset_file
        wanted = _subset_names(subset_file) if subset_file else None
        self._tars = _Indexes(MemberIndex)
        self.keys, self._where = [], []
        for url in self.tars:
            names = sorted(
                (int(m.group(1)), m.group(0))
                for m in map(SA1B_MEMBER.match, self._tars.get(url).members) if m
            )
            for _, name in names:
                stem = name.removesuffix(".jpg")
                key = f"sa1b-{stem}"
                if wanted is not None and stem not in wanted:
                    continue
                if fraction is not None and not in_fraction(key, fraction, seed):
                    continue
                self.keys.append(key)
                self._where.append((url, name))
        if wanted is not None:
            missing = wanted - {k.removeprefix("sa1b-") for k in self.keys}
            if missing:
                raise ValueError(
                    f"{len(missing)} images of --subset-file {subset_file} are not in the {len(self.tars)} tars given "
                    f"(e.g. {sorted(missing)[:3]}): pass all the tars the subset was drawn from"
                )
        if not self.keys:
            raise ValueError(f"no sa_N.jpg images selected from {len(self.tars)} SA-1B tars (fraction={fraction})")

    def load(self, i: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        url, name = self._where[i]
        return decode_rgb(self._tars.get(url).read(name), f"SA-1B tar {url}, member {name}"), None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "sa1b", "url": self.tars, "fraction": self.fraction, "seed": self.seed,
            "subset_file": self.subset_file, "keys_sha256": keys_sha256(self.keys),
        }


def _list_tars(tars: str | list[str]) -> list[str]:
    if isinstance(tars, (list, tuple)):
        return sorted(tars, key=lambda u: os.path.basename(u))
    fs, path = fs_and_path(tars)
    if fs.isfile(path):
        return [tars]
    found = sorted(os.path.basename(p) for p in fs.ls(path, detail=False) if SA1B_TAR.match(os.path.basename(p)))
    if not found:
        raise FileNotFoundError(f"no sa_NNNNNN.tar files in {tars}: expected the SA-1B download folder")
    return [join(tars, name) for name in found]


class FolderSource:
    """A folder of images (searched recursively, sorted by path); keys are ``<prefix>-<relative path>``."""

    def __init__(self, root: str, prefix: str | None = None):
        self.root = str(root).rstrip("/")
        self.fs, base = fs_and_path(self.root)
        base = base.rstrip("/")
        found = self.fs.find(base, detail=True)
        files = sorted(p for p, info in found.items() if p.lower().endswith(IMAGE_EXTS) and info["type"] == "file")
        odd = sorted(p for p, info in found.items() if info["type"] not in ("file", "directory"))
        if odd:  # a FIFO would block the first read forever; a device could be endless
            raise ValueError(f"{len(odd)} entries under {root} are not regular files (FIFOs, devices or sockets; "
                             f"never opened): {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''}; remove them or "
                             f"cache a folder of image files")
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
        self.prefix = safe_key(prefix or os.path.basename(base))
        self._files = files
        rel = [os.path.splitext(os.path.relpath(p, base))[0] for p in files]
        self.keys = [f"{self.prefix}-{safe_key(r)}" for r in rel]
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"image names under {root} collide once made tar-safe; rename them")

    def load(self, i: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        return decode_rgb(self.fs.cat_file(self._files[i]), self._files[i]), None

    def describe(self) -> dict[str, Any]:
        return {"kind": "folder", "url": self.root, "prefix": self.prefix, "keys_sha256": keys_sha256(self.keys)}


@dataclass(frozen=True)
class SourceSpec:
    """Arguments of :func:`open_source` (what the CLI and the store attrs carry)."""

    url: str | list[str]
    kind: str = "auto"
    split: str | None = None
    fraction: float | None = None
    seed: int = 0
    subset_file: str | None = None

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], url: str | list[str] | None = None) -> SourceSpec:
        """The spec of a source from its recorded description (``describe()``, a store's ``source`` attr);
        ``url`` replaces the recorded location (the data moved)."""
        return cls(url or attrs["url"], attrs["kind"], attrs.get("split"), attrs.get("fraction"),
                   attrs.get("seed", 0), attrs.get("subset_file"))


def source_specs(urls: list[str], kind: str = "auto", split: str | None = None, fraction: float | None = None,
                 seed: int = 0, subset_file: str | None = None) -> list[SourceSpec]:
    """One spec per source of ``cache-teacher --source`` (repeated or comma-separated).

    With several sources, the SA-1B options (``fraction``, ``subset_file``) go to the SA-1B sources only and
    ``split`` to the built datasets only; an option that applies to none of them is refused, as with one source.
    """
    if len(urls) == 1:
        return [SourceSpec(urls[0], kind, split, fraction, seed, subset_file)]
    kinds = [_detect(u) if kind == "auto" else kind for u in urls]
    for flag, value, wanted in (("--fraction/--subset-file", fraction if fraction is not None else subset_file,
                                 "sa1b"), ("--split", split, "medical")):
        if value is not None and wanted not in kinds:
            raise ValueError(f"{flag} {value} applies to {wanted} sources, but none of {urls} is one")
    return [SourceSpec(u, k, split if k == "medical" else None, fraction if k == "sa1b" else None, seed,
                       subset_file if k == "sa1b" else None) for u, k in zip(urls, kinds)]


def open_source(spec: SourceSpec) -> Source:
    """Open a source; ``kind="auto"`` picks medical (has manifest.json), sa1b (holds sa_N.tar) or folder."""
    kind = spec.kind
    if kind == "auto":
        kind = _detect(spec.url)
    if kind != "sa1b" and (spec.fraction is not None or spec.subset_file is not None):
        raise ValueError(f"--fraction/--subset-file apply to SA-1B tars only, but {spec.url} is a {kind} source")
    if kind == "medical":
        return MedicalSource(str(spec.url), spec.split)
    if kind == "sa1b":
        return SA1BSource(spec.url, spec.fraction, spec.seed, spec.subset_file)
    if kind == "folder":
        return FolderSource(str(spec.url))
    raise ValueError(f"unknown source kind {kind!r}: expected auto, medical, sa1b or folder")


def _detect(url: str | list[str]) -> str:
    if isinstance(url, (list, tuple)):
        return "sa1b"
    fs, path = fs_and_path(url)
    if fs.exists(join(path, "manifest.json")):
        return "medical"
    if SA1B_TAR.match(os.path.basename(path)) or (
        fs.isdir(path) and any(SA1B_TAR.match(os.path.basename(p)) for p in fs.ls(path, detail=False))
    ):
        return "sa1b"
    if fs.isdir(path):
        return "folder"
    raise FileNotFoundError(f"--source {url} does not exist: expected a built dataset, SA-1B tars or an image folder")
