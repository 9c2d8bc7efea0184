"""Image sources for the teacher cache: a built medical dataset, SA-1B tars in their original form, a folder.

Every source has a fixed, deterministic list of ``keys`` and loads sample ``i`` as an RGB uint8 image plus the
valid (not padded) pixel region. Tar members are read in place through an index of their offsets, never extracted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from medprep.manifests import fs_and_path, join, open_dataset, sha256_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SA1B_MEMBER = re.compile(r"^sa_(\d+)\.jpg$")
SA1B_TAR = re.compile(r"^sa_\d+\.tar$")


class Source(Protocol):
    """What the cache pipeline needs from a source."""

    keys: list[str]

    def load(self, i: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        """Sample ``i``: RGB uint8 ``(H, W, 3)`` and the valid ``(h, w)`` pixel region (None: whole image)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description, enough to reopen the source (:func:`open_source`) and to tell it apart."""
        ...


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode image bytes to RGB uint8 ``(H, W, 3)``."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def keys_sha256(keys: list[str]) -> str:
    return sha256_bytes("\n".join(keys).encode())


class TarIndex:
    """Offsets of the members of one tar file (local or fsspec URL), read by seeking, without extracting."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = fs_and_path(url)
        with self.fs.open(self.path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
            self.members = {m.name.removeprefix("./"): (m.offset_data, m.size) for m in tf if m.isfile()}

    def read(self, name: str) -> bytes:
        offset, size = self.members[name]
        with self.fs.open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(size)


class _TarCache:
    """Tar indexes built once per process, on first use (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._indexes: dict[str, TarIndex] = {}

    def get(self, url: str) -> TarIndex:
        with self._lock:
            if url not in self._indexes:
                self._indexes[url] = TarIndex(url)
            return self._indexes[url]


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
        self._tars = _TarCache()

    def load(self, i: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        tar = self._tars.get(self.dataset.url(self._shard[i]))
        key = self.keys[i]
        image = decode_rgb(tar.read(f"{key}.image.png"))
        meta = json.loads(tar.read(f"{key}.meta.json"))
        valid = meta.get("valid_hw")
        return image, (int(valid[0]), int(valid[1])) if valid else None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "medical", "url": self.dataset.root, "dataset": self.dataset.name, "split": self.split,
            "manifest_sha256": self.dataset.manifest_sha256, "keys_sha256": keys_sha256(self.keys),
        }


def _subset_names(subset_file: str) -> set[str]:
    fs, path = fs_and_path(subset_file)
    with fs.open(path, "rt") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    return {os.path.basename(ln).removeprefix("sa1b-").removesuffix(".jpg") for ln in lines}


def in_fraction(key: str, fraction: float, seed: int) -> bool:
    """Deterministic membership of ``key`` in a ``fraction`` subset: independent of listing order and other tars."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
    return h < fraction * 2.0**64


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
        self._tars = _TarCache()
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
        return decode_rgb(self._tars.get(url).read(name)), None

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


def safe_key(text: str) -> str:
    """Tar-safe key part: no dots, no slashes, no spaces."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


class FolderSource:
    """A folder of images (searched recursively, sorted by path); keys are ``<prefix>-<relative path>``."""

    def __init__(self, root: str, prefix: str | None = None):
        self.root = str(root).rstrip("/")
        self.fs, base = fs_and_path(self.root)
        base = base.rstrip("/")
        files = sorted(p for p in self.fs.find(base) if p.lower().endswith(IMAGE_EXTS))
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
        self.prefix = safe_key(prefix or os.path.basename(base))
        self._files = files
        rel = [os.path.splitext(os.path.relpath(p, base))[0] for p in files]
        self.keys = [f"{self.prefix}-{safe_key(r)}" for r in rel]
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"image names under {root} collide once made tar-safe; rename them")

    def load(self, i: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        return decode_rgb(self.fs.cat_file(self._files[i])), None

    def describe(self) -> dict[str, Any]:
        return {"kind": "folder", "url": self.root, "prefix": self.prefix, "keys_sha256": keys_sha256(self.keys)}


@dataclass
class SourceSpec:
    """Arguments of :func:`open_source` (what the CLI and the store attrs carry)."""

    url: str | list[str]
    kind: str = "auto"
    split: str | None = None
    fraction: float | None = None
    seed: int = 0
    subset_file: str | None = None


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
