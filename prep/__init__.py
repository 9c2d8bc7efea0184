"""Converters and the build pipeline: official dataset layouts -> deterministic webdataset shards."""

from .datasets import Converter, Record, get_converter
from .events import BuildEvent, BuildResult, InputDone, Planned, Published, TaskDone
from .imaging import ConversionError
from .params import BuildError, BuildParams, InputsFailed
from .pipeline import build
from .tree import LayoutError, SourceTree


__all__ = ["BuildError", "BuildEvent", "BuildParams", "BuildResult", "ConversionError", "Converter", "InputDone",
           "InputsFailed", "LayoutError", "Planned", "Published", "Record", "SourceTree", "TaskDone", "build",
           "get_converter"]
