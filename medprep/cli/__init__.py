"""The medprep command line: typer commands over the Python API; parses options into the library's parameter
objects, draws progress from its events, renders its errors.

``group``: the app, ``--version`` and the one error handler; the commands by what they work on: ``build``
(build, datasets, leakage, export), ``show`` (verify, info, preview), ``teacher`` (cache-teacher, check-teacher,
demo); ``parse`` and ``logs``: the option parsing and logging set-up they share.
"""

from __future__ import annotations

from . import build, show, teacher  # noqa: F401 (registers their commands)
from .group import app
from .parse import parse_size

__all__ = ["app", "parse_size"]
