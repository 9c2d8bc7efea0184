"""Typed converter options: each converter declares a frozen dataclass whose field types validate and coerce the
``-o KEY=VALUE`` values (and the CLI flags mapped onto options), so no converter checks its options by hand.

Values arrive typed (the Python API, a recipe's TOML) or as the text given on the command line (``-o KEY=VALUE``,
a converter's own flag): they are read here only, by :func:`coerced`. A field's type is the rule: ``int``,
``float`` (finite: NaN, Infinity and 1e400 are refused), ``bool``, ``str``, ``DatasetName`` (a name that becomes a
folder and starts every sample key), ``dict`` (JSON text on the command line), ``Literal[...]`` (one of the given
values) and ``X | None``; ``option()`` adds the help line ``medprep datasets`` shows, the option's own flag of
``medprep build`` or the spelling an error uses for a missing required option, and a lower bound. Rules between
fields go in the dataclass's ``__post_init__``.
"""

from __future__ import annotations

import json
import math
import re
import types
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class DatasetName(str):
    """The type of an option naming a dataset (``--name`` of ``folder``, ``-o name=`` of ``volumes`` and
    ``medsam-npz``): it becomes the folder ``OUT/<name>`` and starts every sample key (a tar member), so it is
    checked here, where every such name is made, and nowhere can one leave its folder."""

    RULE = ("1 to 64 lower-case letters, digits, '_' and '-', starting with a letter or digit (it names OUT/<name> "
            "and starts every sample key)")

    @classmethod
    def check(cls, value: str, flag: str) -> "DatasetName":
        """``value`` as a dataset name; ValueError naming ``flag`` when it is not one (empty, '..', a '/')."""
        if not _DATASET_NAME.fullmatch(value):
            raise ValueError(f"{flag} {value!r}: expected {cls.RULE}")
        return cls(value)


@dataclass(frozen=True)
class NoOptions:
    """The options of a converter that takes none."""


def option(default: Any = MISSING, *, help: str, flag: str | None = None, ge: float | None = None) -> Any:
    """A declared option: ``default`` (none given: the option is required), a ``help`` line, its ``flag`` and a
    lower bound ``ge`` for numbers. ``flag``: the option's own flag of ``medprep build`` (``--images`` for the
    option ``images``: :func:`own_flags`), or how errors spell a required ``-o`` option (``-o modality=ct|mr``;
    default ``-o KEY=...``)."""
    return field(default=default, metadata={"help": help, "flag": flag, "ge": ge})


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    if tp is bool:
        return "true or false"
    if tp is DatasetName:
        return DatasetName.RULE
    if tp is float:
        return "a finite number"
    if origin is dict or tp is dict:
        return "a JSON object"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``; raises TypeError when it cannot be one."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in (a for a in get_args(tp) if a is not type(None)):
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is Literal:
        for allowed in get_args(tp):
            if value == allowed or (isinstance(value, (int, float)) and str(value) == allowed):
                return allowed
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise TypeError
    if tp is int or tp is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int) or (tp is float and isinstance(value, float)):
            number = tp(value)
        elif isinstance(value, str):
            try:
                number = tp(value)
            except ValueError:
                raise TypeError from None
        else:
            raise TypeError
        if tp is float and not math.isfinite(number):  # NaN, Infinity, 1e400: no window, no threshold
            raise TypeError
        return number
    if tp is DatasetName:
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # -o name=2024 arrives as a number
            value = str(value)
        if not isinstance(value, str):
            raise TypeError
        try:
            return DatasetName.check(value, "")
        except ValueError:
            raise TypeError from None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # -o name=2024 arrives as a number
            return str(value)
        raise TypeError
    if origin is dict or tp is dict:
        if isinstance(value, str):  # from the command line: -o label_windows='{"1": "bone"}'
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise TypeError from None
        if isinstance(value, Mapping):
            return dict(value)
        raise TypeError
    raise NotImplementedError(f"option type {tp!r} has no coercion rule; declare int, float, bool, str, dict, "
                              f"Literal[...] or X | None")


def _name(f: Field) -> str:
    """How the option is named on the command line: its own flag (``--images``) or ``-o KEY``."""
    flag = f.metadata.get("flag") or ""
    return flag if flag.startswith("--") else f"-o {f.name}"


def _flag(f: Field) -> str:
    return f.metadata.get("flag") or f"-o {f.name}=..."


def parse(kind: type[T], given: Mapping[str, Any], dataset: str) -> T:
    """The options ``kind`` of ``--dataset dataset`` from ``given`` (option name -> value as passed), validated and
    coerced by the declared field types."""
    return kind(**coerced(kind, given, dataset))


def coerced(kind: type, given: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The options given (option name -> value: a typed value, or the text of ``-o KEY=VALUE`` and of a converter's
    flag), each validated and coerced by its declared type: the one place option values are read. Raises
    ValueError naming an unknown, missing or malformed option."""
    declared = {f.name: f for f in fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"--dataset {dataset} does not take {', '.join(unknown)} "
                         f"(options: {', '.join(declared) or 'none'})")
    missing = [f for f in declared.values()
               if f.name not in given and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        details = "; ".join(f"{_flag(f)}: {f.metadata['help']}" for f in missing)
        raise ValueError(f"--dataset {dataset} needs {', '.join(_flag(f) for f in missing)} ({details})")
    hints = get_type_hints(kind)
    values = {}
    for key, value in given.items():
        try:
            values[key] = _coerce(value, hints[key])
        except TypeError:
            raise ValueError(f"{_name(declared[key])}: expected {_describe(hints[key])}, got {value!r}") from None
        low = declared[key].metadata.get("ge")
        if low is not None and values[key] is not None and values[key] < low:
            raise ValueError(f"{_name(declared[key])}: expected {_describe(hints[key])} >= {low}, got {value!r}")
    return values


def own_flags(kinds: Mapping[str, type]) -> dict[str, list[tuple[str, str]]]:
    """The options of ``kinds`` (dataset -> its ``Options``) declared with their own flag, for the command line:
    flag -> ``[(dataset, help), ...]`` of every dataset declaring it. A flag spells its option's name
    (``--groups-file``: ``groups_file``), so one flag means one option whichever dataset takes it."""
    out: dict[str, list[tuple[str, str]]] = {}
    for dataset, kind in kinds.items():
        for f in fields(kind):
            flag = f.metadata.get("flag") or ""
            if not flag.startswith("--"):
                continue
            if flag != "--" + f.name.replace("_", "-"):
                raise ValueError(f"{kind.__qualname__}.{f.name} declares flag={flag!r}: an option's own flag spells "
                                 f"its name, --{f.name.replace('_', '-')}")
            out.setdefault(flag, []).append((dataset, f.metadata["help"]))
    return out


def required(kind: type) -> list[str]:
    """How to give the options of ``kind`` that have no default on the command line (``--images IMAGES``,
    ``-o modality=ct|mr``)."""
    flags = [_flag(f) for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING]
    return [flag if "=" in flag else f"{flag} {flag.lstrip('-').upper()}" for flag in flags]


def describe(kind: type) -> list[str]:
    """One line per option of ``kind``: ``KEY=DEFAULT  help`` (``KEY (required)`` without a default)."""
    lines = []
    for f in fields(kind):
        head = f"{f.name} (required)" if f.default is MISSING else f"{f.name}={f.default}"
        lines.append(f"{head}: {f.metadata['help']}")
    return lines


__all__ = ["DatasetName", "NoOptions", "coerced", "describe", "option", "own_flags", "parse",
           "required"]
