"""Converters and the build pipeline: official dataset layouts -> deterministic webdataset shards."""

from .datasets import REGISTRY, Converter, Record, get_converter, load_all
from .events import BuildEvent, BuildResult, InputDone, Planned, Published, TaskDone
from .imaging import ConversionError
from .params import BuildError, BuildParams, InputsFailed
from .pipeline import build
from .tree import LayoutError, SourceTree


def datasets() -> dict[str, type[Converter]]:
    """Every registered converter by name."""
    load_all()
    return dict(sorted(REGISTRY.items()))


__all__ = ["BuildError", "BuildEvent", "BuildParams", "BuildResult", "ConversionError", "Converter", "InputDone",
           "InputsFailed", "LayoutError", "Planned", "Published", "Record", "SourceTree", "TaskDone", "build", "datasets",
           "get_converter"]
