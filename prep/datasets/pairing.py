"""The pairing rules converters share: images matched to their masks by a pattern (``pair_pattern``: ``--dataset
folder`` and the declarative converters of folder-shaped datasets, Kvasir-SEG, the colon mirrors, BUSI, ...) or by a
function of the image's name (``pair_by_name``)."""

from __future__ import annotations

import glob as globlib
import re
from typing import Any, Callable, Sequence

from ..tree import SourceTree, _glob_regex, stem
from .base import Failure, Record, at

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".ppm.gz", ".webp")
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


def pair_by_name(
    tree: SourceTree,
    images: list[str],
    mask_of: Callable[[str], list[str]],
    *,
    split: str | None = None,
    id_of: Callable[[str], str] = stem,
    mask_glob: str | None = None,
    **fields: Any,
) -> tuple[list[Record], list[Failure]]:
    """Records for ``images`` whose masks are named by ``mask_of(image)``; images without a mask and (when
    ``mask_glob`` is given) masks without an image become failures."""
    records, failures, used = [], [], set()
    for img in images:
        masks = mask_of(img)
        missing = [m for m in masks if not tree.exists(m)]
        if missing or not masks:
            expected = ", ".join(missing) or "a mask file named after it"
            failures.append(Failure(id_of(img), (img,), f"image without mask: expected {expected}"))
            continue
        used.update(masks)
        records.append(Record(id_of(img), img, tuple(masks), split=split, **fields))
    if mask_glob is not None:
        for m in tree.glob(mask_glob):
            if m not in used:
                failures.append(Failure(stem(m), (m,), "mask without image"))
    return records, failures


__all__ = ["IMAGE_EXTS", "pair_by_name", "pair_pattern"]
