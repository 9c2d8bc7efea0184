"""Option texts of the command line into the values the library takes; each error names the option."""

from __future__ import annotations

import json
from typing import Optional

import typer


def parse_size(text: str, flag: str = "--shard-bytes") -> int:
    """'1GB', '500MB', '2GiB', '1G', '123' -> bytes (``dask.utils.parse_bytes``); a ValueError naming ``flag``
    otherwise."""
    from medprep.prep.params import parse_size as parse_bytes

    return parse_bytes(text, flag)


def key_values(pairs: list[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` pairs -> ``{KEY: VALUE}``, ``-`` in keys read as ``_``; the values stay text, read by whatever
    declares them (a converter's ``Options``: ``-o``)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.replace("-", "_")] = value
    return out


def json_values(pairs: list[str], flag: str) -> dict[str, object]:
    """``KEY=VALUE`` pairs of undeclared arguments (``--encoder-arg``) -> dict, each value read as JSON when it is
    JSON (``img_size=64`` -> 64), else kept as text."""
    out: dict[str, object] = {}
    for key, value in key_values(pairs, flag).items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def json_object(flag: str, text: Optional[str]) -> dict[str, object] | None:
    """``'{"k": 1}'`` -> ``{"k": 1}``; None stays None."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} {text!r}: not JSON ({e}); expected an object, e.g. "
                         f"'{{\"endpoint_url\": \"http://127.0.0.1:9000\"}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} {text!r}: expected a JSON object, found {type(value).__name__}")
    return value


def ints(flag: str, text: Optional[str]) -> tuple[int, ...] | None:
    """``'16,32,64'`` -> ``(16, 32, 64)``; None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated whole numbers, e.g. 16,32,64") from None
