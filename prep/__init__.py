"""Converters and the build pipeline: official dataset layouts -> deterministic webdataset shards."""

from .datasets import REGISTRY, Converter, Record, get_converter, load_all
from .imaging import ConversionError
from .pipeline import BuildError, BuildResult, build
from .tree import LayoutError, SourceTree


def datasets() -> dict[str, type[Converter]]:
    """Every registered converter by name."""
    load_all()
    return dict(sorted(REGISTRY.items()))


__all__ = ["BuildError", "BuildResult", "ConversionError", "Converter", "LayoutError", "Record", "SourceTree",
           "build", "datasets", "get_converter"]
