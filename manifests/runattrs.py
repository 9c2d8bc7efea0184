"""The declared schema of a teacher store run (zarr v3 group attrs and arrays), checked once when a run is opened.

Attributes are parsed with pydantic (strict: ``"4"`` is not a shard size, ``True`` not a count); then the arrays are
checked against what the attributes say: every array the format names is present, with ``N`` rows (``N``: the rows
of ``keys``), ``features`` of shape ``(N, *feature_shape)`` in the zarr dtype that ``dtype`` is stored as (int16
bits are never read as float16), ``scale`` ``(N, C)`` float16 for int8 runs. One :class:`RunSchemaError` names the
run, the field, the value found and what was expected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import zarr
from annotated_types import Len
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from .errors import MedprepError

DTYPES = ("float16", "int8", "bfloat16", "float32")
VIEWS = ("identity", "hflip")
#: zarr (numpy) dtype each feature dtype is stored as (bfloat16 as its raw 16 bits)
STORED: dict[str, str] = {"float16": "float16", "int8": "int8", "bfloat16": "uint16", "float32": "float32"}
#: the format whose keys are a zarr ``string`` array of shape (N,) (later formats: (N, L) uint8)
STRING_KEYS_FORMAT = "medprep-teacher-v1"

#: attributes renamed after runs were written under the old name (old -> new), read under the new name by
#: :func:`upgrade`; the store format is otherwise unchanged. ``shard_size`` (samples per zarr shard) became
#: ``shard_samples`` (``shard_size`` also named the byte limit of a build's tar shards, now ``shard_bytes``).
RENAMED = {"shard_size": "shard_samples"}

#: what each attribute must be, in words (the error says it)
EXPECTED = {
    "format": "the store format written by medprep cache-teacher",
    "dtype": f"one of {', '.join(DTYPES)}",
    "views": "a list of views: 'identity', optionally 'hflip', each once",
    "shard_samples": "a positive integer (samples per zarr shard)",
    "feature_shape": "a list of 3 positive integers [channels, rows, columns]",
    "keep_padding": "true or false",
    "source": "an object with 'kind' (medical, sa1b or folder) and 'url'",
}


class SourceAttrs(BaseModel):
    """The ``source`` attribute: where the run's images came from (more fields per kind)."""

    model_config = ConfigDict(extra="allow", strict=True)
    kind: Literal["medical", "sa1b", "folder"]
    url: str | list[str]


class RunAttrs(BaseModel):
    """The attributes of a run that readers rely on; others (the teacher, the preprocessing) are kept as given."""

    model_config = ConfigDict(extra="allow", strict=True)
    format: str
    dtype: Literal["float16", "int8", "bfloat16", "float32"]
    views: list[Literal["identity", "hflip"]]
    shard_samples: PositiveInt
    feature_shape: Annotated[list[PositiveInt], Len(3, 3)]
    keep_padding: bool = False
    encoder: str | None = None
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    preprocess: dict[str, Any] | None = None
    autocast: Literal["bfloat16", "float16", "none"] | None = None
    source: SourceAttrs | None = None

    @field_validator("views")
    @classmethod
    def _identity_once(cls, views: list[str]) -> list[str]:
        if "identity" not in views or len(set(views)) != len(views):
            raise ValueError("expected 'identity', optionally 'hflip', each once")
        return views


class RunSchemaError(MedprepError, ValueError):
    """A run's attributes or arrays do not match the store format."""


def _advice(where: str) -> str:
    return (f"the run was changed after 'medprep cache-teacher' wrote it, or written by another tool; delete {where} "
            f"and rerun 'medprep cache-teacher' (or restore it from a copy)")


def upgrade(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` of a run as this medprep names them: an attribute written under its old name (:data:`RENAMED`, by a
    medprep before the rename) under its new one."""
    out = dict(attrs)
    for old, new in RENAMED.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def check_attrs(attrs: dict[str, Any], where: str) -> RunAttrs:
    """``attrs`` parsed into :class:`RunAttrs`; a :class:`RunSchemaError` naming the first bad field otherwise."""
    try:
        return RunAttrs.model_validate(attrs)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0])
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"][1:])
        found = "missing" if err["type"] == "missing" else f"{attrs.get(field)!r}"
        expected = EXPECTED.get(field, err["msg"])
        raise RunSchemaError(f"{where}: attribute {field!r} is {found}{f' (at {field}{path})' if path else ''}, "
                             f"expected {expected}; {_advice(where)}") from None


def array_names(attrs: RunAttrs) -> list[str]:
    """Every array a run with ``attrs`` holds."""
    names = ["keys", "valid_hw", "done"]
    for view in attrs.views:
        sfx = "" if view == "identity" else f"_{view}"
        names += [f"features{sfx}"] + ([f"scale{sfx}"] if attrs.dtype == "int8" else [])
    return names + (["valid_x_hflip"] if "hflip" in attrs.views else [])


def check_arrays(group: zarr.Group, attrs: RunAttrs, where: str) -> dict[str, zarr.Array]:
    """The run's arrays, opened, each checked against ``attrs`` (presence, rows, shape, zarr dtype)."""
    arrays: dict[str, zarr.Array] = {}
    for name in array_names(attrs):
        try:
            arrays[name] = group[name]
        except KeyError:
            raise RunSchemaError(f"{where}: array {name!r} is missing (the run's attributes say dtype "
                                 f"{attrs.dtype!r}, views {attrs.views}); {_advice(where)}") from None
        if not isinstance(arrays[name], zarr.Array):
            raise RunSchemaError(f"{where}: {name!r} is a group, expected an array; {_advice(where)}")
    n = arrays["keys"].shape[0]
    c = attrs.feature_shape[0]
    string_keys = attrs.format == STRING_KEYS_FORMAT
    for name, array in arrays.items():
        base = name.split("_hflip")[0] if name.startswith(("features", "scale")) else name
        shape, dtype = {
            "keys": (None, None),
            "features": ((n, *attrs.feature_shape), STORED[attrs.dtype]),
            "scale": ((n, c), "float16"),
            "valid_hw": ((n, 2), None),
            "valid_x_hflip": ((n, 2), None),
            "done": ((n,), "bool"),
        }[base]
        if name == "keys":
            ok = array.ndim == 1 if string_keys else (array.ndim == 2 and array.dtype == np.uint8)
            if not ok:
                raise RunSchemaError(f"{where}: array 'keys' has shape {array.shape} and dtype {array.dtype}, "
                                     f"expected (N, L) uint8 (the UTF-8 bytes of each key); {_advice(where)}")
            continue
        if array.shape != shape:
            what = (f"(N, *feature_shape) = {shape} (attribute feature_shape {attrs.feature_shape}, N = {n} keys)"
                    if base == "features" else f"{shape} (N = {n} keys)")
            raise RunSchemaError(f"{where}: array {name!r} has shape {array.shape}, expected {what}; {_advice(where)}")
        if dtype is not None and array.dtype != np.dtype(dtype):
            raise RunSchemaError(f"{where}: array {name!r} has zarr dtype {array.dtype}, expected {dtype} (attribute "
                                 f"dtype {attrs.dtype!r}); {_advice(where)}")
        if base in ("valid_hw", "valid_x_hflip") and array.dtype.kind not in "iu":
            raise RunSchemaError(f"{where}: array {name!r} has zarr dtype {array.dtype}, expected integers; "
                                 f"{_advice(where)}")
    return arrays


def require(attrs: dict[str, Any], names: tuple[str, ...], where: str, purpose: str) -> None:
    """Refuse a run whose attributes lack any of ``names`` (recorded by every medprep run, needed ``purpose``)."""
    missing = [k for k in names if k not in attrs]
    if missing:
        raise RunSchemaError(f"{where}: attribute(s) {', '.join(map(repr, missing))} missing, needed {purpose}; "
                             f"{_advice(where)}")


__all__ = ["DTYPES", "EXPECTED", "RENAMED", "RunAttrs", "RunSchemaError", "STORED", "VIEWS", "array_names",
           "check_arrays", "check_attrs", "require", "upgrade"]
