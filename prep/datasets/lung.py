"""The papers' x-ray source domain: Montgomery and Shenzhen together (138 + 566 = 704 -> 563/70/71).

The authors' ``lung_data_split.json`` lists both sets' stems in one file; build it with ``--dataset lung``.
"""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .montgomery import Montgomery
from .shenzhen import Shenzhen


@register
class Lung(Converter):
    name = "lung"
    title = "Montgomery + Shenzhen chest X-rays (the papers' x-ray domain)"
    modality = "x-ray"
    marker = "CXR_png/*CXR_*.png"
    layout = f"both downloads side by side: {Montgomery.layout}; {Shenzhen.layout}"
    fake_counts = {"train": 15, "valid": 2, "test": 2}
    fake_failures = Shenzhen.fake_failures
    homepage, license, citation = Shenzhen.homepage, Shenzhen.license, Shenzhen.citation

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        records, failures = [], []
        for part in (Montgomery(), Shenzhen()):
            r, f = part.discover(tree)
            records += r
            failures += f
        return records, failures

    @staticmethod
    def fake(root: Path, seed: int = 0) -> Path:
        """Both fake downloads side by side under ``root``."""
        Montgomery.fake(root, seed=seed)
        Shenzhen.fake(root, seed=seed)
        return root
