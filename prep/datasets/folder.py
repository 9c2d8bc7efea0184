"""Any 2D dataset given as an image glob and a mask pattern (``--dataset folder``); ``pair_pattern`` is also the
pairing rule of the declarative converters of folder-shaped datasets (Kvasir-SEG, the colon mirrors, BUSI, ...)."""

from __future__ import annotations

import glob as globlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

from ..tree import LayoutError, SourceTree, _glob_regex, stem
from .base import Converter, Failure, Record, at, register
from .options import DatasetName, option

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".ppm.gz", ".webp")
PLACEHOLDERS = ("stem", "name", "dir", "parent")
_MAGIC = re.compile(r"[*?[]")  # what glob.escape escapes
_SLASHES = re.compile(r"/+")


def _fill(pattern: str, image: str, root: str) -> str:
    """``pattern`` with the placeholders of ``image`` (path relative to the tree) filled in, glob-escaped."""
    folder, _, name = (image[len(root) + 1:] if root else image).rpartition("/")  # tree paths are normalised
    dot = name.rfind(".")
    values = {"stem": name[:dot] if 0 < dot < len(name) - 1 else name, "name": name, "dir": folder,
              "parent": folder.rpartition("/")[2]}
    try:
        magic = _MAGIC.search(folder) or _MAGIC.search(name)  # every value is a part of these two
        filled = pattern.format(**({k: globlib.escape(v) for k, v in values.items()} if magic else values))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"--masks {pattern!r}: unknown placeholder {e}; use {{stem}}, {{name}}, {{dir}} or "
                         f"{{parent}}") from None
    return at(root, _SLASHES.sub("/", filled).strip("/"))


def _pattern_regex(pattern: str, root: str) -> re.Pattern[str]:
    """Regex matching every file the mask ``pattern`` can name, whatever the placeholders hold."""
    out = []
    for part in re.split(r"(\{dir\}/?|\{\w+\})", pattern):
        if part.startswith("{dir}"):
            out.append("(?:.*/)?" if part.endswith("/") else ".*")
        elif re.fullmatch(r"\{\w+\}", part):
            out.append("[^/]+")
        elif part:
            out.append(_glob_regex(part))
    return re.compile((re.escape(root + "/") if root else "") + "".join(out))


def relative_id(glob: str) -> Callable[[str], str]:
    """Ids of the files of ``glob``: the path below the glob's fixed folders, without extension
    ('imgs/*/*.png' names 'imgs/case1/001.png' 'case1/001'), so equal file names in two folders stay apart."""
    head = re.split(r"[*?\[]", glob, maxsplit=1)[0]
    prefix = head.rsplit("/", 1)[0] + "/" if "/" in head else ""

    def id_of(path: str) -> str:
        rel = path[len(prefix):] if path.startswith(prefix) else path
        return str(PurePosixPath(rel).parent / stem(rel)) if "/" in rel else stem(rel)

    return id_of


def pair_pattern(
    tree: SourceTree,
    images: str,
    masks: str | Sequence[str],
    *,
    root: str = "",
    extras: dict[str, str] | None = None,
    ignore_case: bool = False,
    id_of: Callable[[str], str] = stem,
    **fields: Any,
) -> tuple[list[Record], list[Failure]]:
    """Records for the image files matching the glob ``images`` (below ``root``), each paired with the files of the
    mask pattern ``masks`` (several matches are OR-merged; a sequence of patterns is tried in order).

    Patterns use ``{stem}``, ``{name}``, ``{dir}`` (the image's folder below ``root``) and ``{parent}`` (that
    folder's name) and may hold wildcards. Files the mask pattern can name never count as images; images without
    a mask and masks without an image become failures. ``id_of`` names a record after its image (default: the file
    stem). ``extras`` maps an optional extra entry (e.g. ``fov``) to a pattern; the extras of an image without a
    mask are listed with its failure.
    """
    patterns = [masks] if isinstance(masks, str) else list(masks)
    is_mask = re.compile("|".join(f"(?:{_pattern_regex(p, root).pattern})" for p in patterns)).fullmatch
    found = [f for f in tree.glob(at(root, images), ignore_case=ignore_case)
             if f.lower().endswith(IMAGE_EXTS) and not is_mask(f)]
    records, failures, used = [], [], set()
    for img in found:
        sid = id_of(img)
        tried, matched = [], []
        for p in patterns:
            tried.append(_fill(p, img, root))
            matched = tree.glob(tried[-1], ignore_case=ignore_case)
            if matched:
                break
        extra = {}
        for key, pat in (extras or {}).items():
            hits = tree.glob(_fill(pat, img, root), ignore_case=ignore_case)
            if hits:
                extra[key] = hits[0]
        if not matched:  # its extras (HRF's field of view) fail with it, not as unexpected files
            failures.append(Failure(sid, (img, *extra.values()), f"image without mask: expected {' or '.join(tried)}"))
            continue
        used.update(matched)
        records.append(Record(sid, img, tuple(matched), extras=extra, **fields))
    for f in tree.files:
        if f not in used and is_mask(f) and f.lower().endswith(IMAGE_EXTS):
            failures.append(Failure(stem(f), (f,), "mask without image"))
    return records, failures


@register
class Folder(Converter):
    """A dataset medprep has no converter for: ``--images GLOB --masks PATTERN --modality NAME --name NAME``."""

    name = "folder"
    title = "Any 2D image/mask folder (generic pairing rule)"
    modality = "?"
    split_rule = "test"
    marker = "*"
    src_relative = True  # its globs are relative to --src
    layout = ("--images 'imgs/*.png' --masks 'labels/{stem}_mask.png': the image glob and the mask pattern, relative "
              "to --src; placeholders {stem}, {name}, {dir}, {parent}; several mask matches are OR-merged")
    fake_counts = {"test": 4}
    fake_failures = 1  # the image without a mask
    fake_options = {"images": "imgs/*/*.png", "masks": "labels/{parent}/{stem}_mask.png", "modality": "dermoscopy",
                    "name": "fake-folder"}

    @dataclass(frozen=True, kw_only=True)
    class Options:
        images: str = option(help="image glob below --src, e.g. 'imgs/*.png'", flag="--images")
        masks: str = option(help="mask pattern ({stem}, {name}, {dir}, {parent}), e.g. 'labels/{stem}_mask.png'",
                            flag="--masks")
        modality: str = option(help="a modality of the table, e.g. dermoscopy", flag="--modality")
        name: DatasetName = option(help="dataset name: sample keys and OUT/<name>, e.g. mylesions", flag="--name")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.name = self.opts.name
        self.modality = self.opts.modality

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        images = self.opts.images
        if not tree.glob(images):
            raise LayoutError(f"{self.name}: --images {images!r} matches no file under {tree.label}; "
                              f"found {tree.top_level()}")
        return pair_pattern(tree, images, self.opts.masks, id_of=relative_id(images))

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 4) -> Path:
        """A folder of ``n`` PNG images in two case folders ``imgs/caseK/NNN.png`` with 0/1 (not 0/255) masks
        ``labels/caseK/NNN_mask.png`` (equal file names in both cases), and one image without a mask."""
        import numpy as np

        from ..synthetic import png, scene, write

        rng = np.random.default_rng(seed)
        base = root / "folder"
        for i in range(n):
            case, sid = f"case{i % 2 + 1}", f"{i // 2:03d}"
            img, mask = scene(40, 48, rng)
            write(base / "imgs" / case / f"{sid}.png", png(img))
            write(base / "labels" / case / f"{sid}_mask.png", png(mask.astype(np.uint8)))
        write(base / "imgs" / "case1" / "lonely.png", png(scene(40, 48, rng)[0]))
        return base
