"""File-system helpers shared by writers and readers: fsspec URLs, atomic writes, hashing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlparse
from urllib.request import url2pathname

import fsspec
import fsspec.config
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

CHUNK = 1 << 20


def fs_and_path(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve a local path or fsspec URL to ``(filesystem, path)``."""
    return url_to_fs(str(url))


# 's3://b/x', 's3:/b/x' (what pathlib makes of it), 'simplecache::s3://b/x'; one letter is a Windows drive ('C:/x')
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):[:/]")


def url_scheme(path: str | os.PathLike) -> str | None:
    """The URL scheme ``path`` starts with (``s3`` for ``s3://bucket/x``, also after ``pathlib.Path`` made it
    ``s3:/bucket/x``), lower-cased; None for a local path."""
    m = _SCHEME.match(os.fspath(path))
    return m.group(1).lower() if m else None


def is_remote(url: str | os.PathLike) -> bool:
    """Whether ``url`` names an object store or another remote file system (any URL but ``file://``)."""
    return url_scheme(url) not in (None, "file")


def configure(url: str | os.PathLike, options: Mapping[str, Any] | None) -> None:
    """Use the storage ``options`` (s3fs: ``endpoint_url``, ``key``, ``secret``, ``client_kwargs``...) for every
    file system of ``url``'s protocol that this process opens from now on (fsspec's config, which also takes them
    from ``FSSPEC_<PROTOCOL>_<OPTION>`` environment variables). None or empty changes nothing."""
    scheme = url_scheme(url)
    if not options or scheme is None:
        return
    fsspec.config.conf.setdefault(scheme, {}).update(options)
    fsspec.get_filesystem_class(scheme).clear_instance_cache()


def local_path(path: str | os.PathLike, option: str, refusal: str) -> Path:
    """``path`` as a local path, for writers and readers that work on local files only: a plain path, or a
    ``file://`` URL's path. Any other URL raises ``ValueError`` naming ``option`` and the URL, followed by
    ``refusal`` (why it cannot be used and what to do), so no local folder named ``s3:`` is ever created."""
    text = os.fspath(path)
    scheme = url_scheme(text)
    if scheme is None:
        return Path(text)
    if scheme == "file":
        return Path(url2pathname(urlparse(text).path))
    shown = text if "://" in text else text.replace(":/", "://", 1)
    raise ValueError(f"{option} {shown}: {refusal}")


def join(url: str | os.PathLike, *parts: str) -> str:
    """Join URL parts with '/' (works for local paths and object-store URLs)."""
    out = str(url).rstrip("/")
    for p in parts:
        out = f"{out}/{p.lstrip('/')}"
    return out


def dumps(obj: Any) -> bytes:
    """Canonical JSON encoding: sorted keys, fixed separators, UTF-8, trailing newline."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def jsonl_bytes(rows: Iterable[dict]) -> bytes:
    """Canonical JSON-lines encoding of ``rows``."""
    return b"".join(
        (json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode() for r in rows
    )


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(url: str | os.PathLike) -> str:
    """sha256 of a local file or fsspec URL, streamed."""
    fs, path = fs_and_path(url)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(url: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary sibling and move it into place, so readers never see a partial file.

    Local files are fsynced before the rename; object stores publish an object only when its upload completes.
    """
    fs, path = fs_and_path(url)
    if isinstance(fs, LocalFileSystem):
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    else:
        fs.pipe_file(path, bytes(data))


def read_bytes(url: str | os.PathLike) -> bytes:
    fs, path = fs_and_path(url)
    return fs.cat_file(path)


def read_json(url: str | os.PathLike) -> Any:
    return json.loads(read_bytes(url))


def human_bytes(n: int) -> str:
    """A byte count for people, in the decimal units ``--shard-bytes`` takes: ``1234567`` -> ``1.2 MB``."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def iter_jsonl(url: str | os.PathLike) -> Iterator[dict]:
    """Rows of a JSON-lines file; a missing file yields nothing; a line that is not JSON raises a ``ValueError``
    naming the file and the line."""
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        return
    with fs.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{url} line {n} is not JSON ({e})") from None
