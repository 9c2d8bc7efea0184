"""Any 2D dataset given as an image glob and a mask pattern (``--dataset folder``), paired by
:func:`~medprep.prep.datasets.pairing.pair_pattern`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from ..tree import LayoutError, SourceTree, stem
from .base import Converter, Failure, Record, register
from .options import DatasetName, option
from .pairing import pair_pattern


def relative_id(glob: str) -> Callable[[str], str]:
    """Ids of the files of ``glob``: the path below the glob's fixed folders, without extension
    ('imgs/*/*.png' names 'imgs/case1/001.png' 'case1/001'), so equal file names in two folders stay apart."""
    head = re.split(r"[*?\[]", glob, maxsplit=1)[0]
    prefix = head.rsplit("/", 1)[0] + "/" if "/" in head else ""

    def id_of(path: str) -> str:
        rel = path[len(prefix):] if path.startswith(prefix) else path
        return str(PurePosixPath(rel).parent / stem(rel)) if "/" in rel else stem(rel)

    return id_of


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
