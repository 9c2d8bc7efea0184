"""Build recipes: a TOML file holding the options of one ``medprep build``, written beside every manifest as
``recipe.toml`` so that ``medprep build --config recipe.toml`` builds the same bytes again.

Keys are the option names of ``medprep build`` without the leading dashes (``dataset``, ``src``, ``out``,
``size``, ``patch-sizes``, ``shard-bytes``, ...; ``_`` may stand for ``-``); converter options (``-o KEY=VALUE``,
``--images``, ``--groups-file``, ...) go in an ``[options]`` table (or at the top level, by their option name) and
are passed on as they are. Relative ``src``, ``out`` and ``split-file`` paths are relative to the recipe's folder.
A recipe holds what decides the bytes, never how a build runs: the execution options (``RUN_OPTIONS``: scheduler,
workers, wait, progress, ...) are refused in it, so a shared recipe cannot send a build (and dask's pickles) to an
address, and one key spelled twice (``patch-sizes`` and ``patch_sizes``) is an error rather than the last one winning.
The written recipe names the build's output as ``out = ".."`` (the folder above the recipe's, where it lies), so it
holds no path of where it was built.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from medprep.manifests.modalities import is_table_file

from .params import BuildParams
from .tree import read_regular

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RECIPE = "recipe.toml"
PATHS = ("src", "out", "split_file")  # keys holding paths relative to the recipe's folder
_BARE = re.compile(r"[A-Za-z0-9_-]+")
# options of ``medprep build`` that decide how a build runs, not its bytes: given on the command line only
RUN_OPTIONS = ("scheduler", "workers", "wait", "progress_every", "quiet", "verbose", "as_json", "json", "strict",
               "overwrite", "max_failures", "allow_empty_split", "check_against", "leak_min_score", "config",
               "storage_options", "keep_generations")
#: keys renamed since recipes were first written (old -> new), read under the new name: ``shard-size`` (the byte limit
#: of a shard) became ``shard-bytes`` (``shard_size`` also named the teacher cache's samples per zarr shard)
RENAMED = {"shard_size": "shard_bytes"}


def recipe_toml(p: BuildParams, src: str) -> bytes:
    """The recipe of a build of ``p`` from the source ``src`` (the dataset's folder or archive), as TOML."""
    doc: dict[str, Any] = {"dataset": p.dataset, "src": src, "out": ".."}
    for f in fields(BuildParams):
        value = getattr(p, f.name)
        if f.name not in ("dataset", "options") and value is not None:
            doc[f.name] = str(Path(value).resolve()) if f.name == "split_file" or (
                f.name == "modality_map" and is_table_file(value)) else value
    head = ("# medprep build recipe: `medprep build --config recipe.toml` rebuilds these bytes (options given on the\n"
            "# command line override these; relative paths are relative to this file's folder).\n")
    body = "".join(f"{_key(k.replace('_', '-'))} = {_value(v)}\n" for k, v in doc.items())
    options = "".join(f"{_key(k)} = {_value(v)}\n" for k, v in sorted(p.options.items()))
    return (head + body + (f"\n[options]\n{options}" if options else "")).encode()


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The keys of the recipe at ``path`` as option names (``shard-bytes`` -> ``shard_bytes``), converter options
    under ``options``, relative ``src``/``out``/``split_file`` resolved against the recipe's folder. Raises
    ValueError naming an unreadable file, an execution option (``RUN_OPTIONS``) and a key spelled twice. A key of
    :data:`RENAMED` (a recipe written before the rename) is read under its new name. Which other keys are known is
    the caller's (the command's options)."""
    path = Path(path)
    try:
        doc = tomllib.loads(read_regular(path).decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"--config {path}: cannot read it as a TOML recipe ({e})") from None
    out = _folded(doc, path, "")
    for key, name in RENAMED.items():
        if key in out and name in out:
            raise ValueError(f"--config {path}: keys {key.replace('_', '-')!r} (the old name) and "
                             f"{name.replace('_', '-')!r} are one option; keep {name.replace('_', '-')!r}")
        if key in out:
            out[name] = out.pop(key)
    run = sorted(k for k in out if k in RUN_OPTIONS)
    if run:
        flags = ", ".join("--" + ("json" if k == "as_json" else k.replace("_", "-")) for k in run)
        raise ValueError(f"--config {path}: {', '.join(run)} decide how a build runs, not what it builds; a recipe "
                         f"holds only what decides the bytes: remove them from the file and give {flags} on the "
                         f"command line")
    options = out.get("options", {})
    if not isinstance(options, dict):
        raise ValueError(f"--config {path}: [options] must be a table of converter options")
    out["options"] = _folded(options, path, "[options] ")
    for name in PATHS:
        if isinstance(out.get(name), str):
            out[name] = _relative_to(path.parent, out[name])
    return out


def _folded(table: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    """``table`` with ``-`` in its keys read as ``_``; raises ValueError naming the file and both keys when two of
    them are one key spelled two ways (``patch-sizes`` and ``patch_sizes``)."""
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in spelled:
            raise ValueError(f"--config {path}: {where}keys {spelled[name]!r} and {key!r} are one option spelled "
                             f"twice; keep one of them")
        spelled[name] = key
        out[name] = value
    return out


def _relative_to(folder: Path, value: str) -> str:
    """``value`` as given when absolute or a URL, else joined to ``folder``."""
    return value if "://" in value or Path(value).is_absolute() else os.path.normpath(folder / value)


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else json.dumps(key)


def _value(v: Any) -> str:
    """A TOML value: strings with JSON's escapes (valid TOML basic strings), numbers, booleans, arrays, inline
    tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, os.PathLike)):
        return json.dumps(os.fspath(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"a recipe cannot hold {type(v).__name__} values ({v!r})")


__all__ = ["RECIPE", "RUN_OPTIONS", "read_recipe", "recipe_toml"]
