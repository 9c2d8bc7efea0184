"""A built dataset at a path or fsspec URL: its manifest, its samples list, and every read of its shards.

Readers of shards go through :class:`BuiltDataset`, so each gets the same checks: a shard's size against the
manifest when it is opened, its member names and sample count while it is read (``medprep.manifests.tar``), and the
dataset's generation: when a shard is opened (and after every ranged read), ``manifest.json`` is looked at again
and a dataset replaced by another build under the reader raises :class:`GenerationError`.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import IO, Any, Collection, Iterator, Sequence

from . import fsio, tar
from .schema import FAILURES, MANIFEST, SAMPLES, Manifest, ShardEntry, sample_row_problem, wids_problems
from .tar import ShardError, ShardIndex
from .verify import verify


class GenerationError(ShardError):
    """The dataset at a reader's path was replaced by another build (or removed) while it was being read."""


class BuiltDataset:
    """A built dataset at a local path or fsspec URL, read through its manifest."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root).rstrip("/")
        url = fsio.join(self.root, MANIFEST)
        try:
            raw = fsio.read_bytes(url)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no {MANIFEST} under {self.root}: expected a folder written by 'medprep build' "
                f"(a build that was interrupted has no manifest yet; rerun it to resume)"
            ) from None
        self.manifest_sha256 = fsio.sha256_bytes(raw)
        try:
            self.manifest = Manifest.from_json(json.loads(raw))
        except ValueError as e:  # json.JSONDecodeError is a ValueError too
            raise ValueError(f"{url}: {e}; run 'medprep verify {self.root}'") from None
        self._entries = {s.name: s for s in self.manifest.shards}
        self._stamp: str | None = None  # manifest.json's file stamp when its generation was last confirmed
        self._resolved: dict[str, tuple[Any, str]] = {}  # URL -> (file system, path), see :meth:`_fs_path`
        self._resolved_pid = os.getpid()

    def __repr__(self) -> str:
        splits = {s: self.manifest.nsamples(s) for s in self.manifest.splits()}
        return (f"BuiltDataset({self.root!r}, dataset={self.name!r}, samples={splits}, "
                f"shards={len(self.manifest.shards)}, generation={self.generation!r})")

    @property
    def name(self) -> str:
        return self.manifest.dataset

    @property
    def generation(self) -> str:
        """The build's identity (see ``Manifest.content_generation``)."""
        return self.manifest.generation

    def url(self, name: str) -> str:
        return fsio.join(self.root, name)

    def _fs_path(self, url: str) -> tuple[Any, str]:
        """``fsio.fs_and_path(url)``, resolved once per URL and process for this reader (every ranged read and
        generation check uses it; a forked DataLoader worker resolves again, so it never shares its parent's file
        system objects; storage options set with ``fsio.configure`` after the first read of a file do not reach it)."""
        if self._resolved_pid != os.getpid():
            self._resolved, self._resolved_pid = {}, os.getpid()
        hit = self._resolved.get(url)
        if hit is None:
            hit = self._resolved[url] = fsio.fs_and_path(url)
        return hit

    def file_url(self, name: str) -> str:
        """The URL of the build's file ``name`` (``samples.jsonl``, ``card.json``...): beside the manifest, or in
        the build folder of a build published to an object store."""
        return self.url(self.manifest.path(name))

    def shard_urls(self, split: str | None = None) -> list[str]:
        """URLs of the shards of ``split`` (all splits when None), in manifest order."""
        return [self.url(s.name) for s in self.manifest.shards_of(split)]

    def samples(self, split: str | None = None) -> Iterator[dict[str, Any]]:
        """Rows of ``samples.jsonl`` (optionally of one split), in shard order; a row that does not match the schema
        (:func:`~medprep.manifests.schema.sample_row_problem`) raises a ``ValueError`` naming its line."""
        for n, row in enumerate(fsio.iter_jsonl(self.file_url(SAMPLES)), 1):
            problem = sample_row_problem(row, self._entries)
            if problem:
                raise ValueError(f"{self.file_url(SAMPLES)} line {n}: {problem}; run 'medprep verify {self.root}'")
            if split is None or row["split"] == split:
                yield row

    def keys(self, split: str | None = None) -> list[str]:
        return [r["key"] for r in self.samples(split)]

    def failures(self) -> list[dict[str, Any]]:
        return list(fsio.iter_jsonl(self.file_url(FAILURES)))

    def wids_url(self, split: str) -> str:
        return self.file_url(f"{split}.wids.json")

    def verify(self) -> list[str]:
        """Every problem ``medprep verify`` finds, as ``"<file>: <problem>"`` lines (empty if none)."""
        return [str(p) for p in verify(self.root).problems]

    # -- shards ---------------------------------------------------------------------------------------------------
    def entry(self, shard: str | ShardEntry) -> ShardEntry:
        """The manifest entry of ``shard`` (a name or an entry)."""
        name = shard.name if isinstance(shard, ShardEntry) else shard
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"{self.root} has no shard {name!r} in its {MANIFEST}") from None

    def where(self, shard: str) -> str:
        """How errors name a shard: ``shard <name> of <dataset root>``."""
        return f"shard {shard} of {self.root}"

    def check_generation(self, shard: str) -> None:
        """Raise :class:`GenerationError` if ``manifest.json`` now names another build than the one this reader
        opened (``shard`` is named in the message). Cheap when nothing changed: the manifest is read again only
        when its file stamp (fsspec ``ukey``: size, mtime, inode) differs from the last confirmed one."""
        fs, path = self._fs_path(self.url(MANIFEST))
        gone = (f"{self.where(shard)}: the dataset was removed or is being replaced while it was read "
                f"({MANIFEST} is gone); open it again once the build has finished")
        try:
            stamp = fs.ukey(path)  # before reading: a change after this is seen at the next check
            if stamp == self._stamp:
                return
            now = Manifest.from_json(json.loads(fs.cat_file(path))).generation
        except FileNotFoundError:
            raise GenerationError(gone) from None
        except ValueError as e:
            raise GenerationError(f"{self.where(shard)}: {MANIFEST} cannot be read any more ({e})") from None
        if now != self.generation:
            raise GenerationError(
                f"{self.where(shard)}: the dataset was replaced by another build (generation {now}) while this "
                f"reader was reading generation {self.generation}; open it again to read the new build")
        self._stamp = stamp

    @contextmanager
    def open_shard(self, shard: str | ShardEntry) -> Iterator[tuple[ShardEntry, IO[bytes]]]:
        """Open a shard for reading, after checking the generation and the opened file's size (a shard cut short
        or replaced raises here, before anything is read)."""
        e = self.entry(shard)
        fs, path = self._fs_path(self.url(e.name))
        try:
            f = fs.open(path, "rb")
        except FileNotFoundError:
            self.check_generation(e.name)
            raise ShardError(f"{self.where(e.name)}: missing; run 'medprep verify {self.root}'") from None
        with f:
            self.check_generation(e.name)  # after opening: the open file belongs to the confirmed generation
            size = tar.seekable_size(f)
            if size != e.bytes:
                raise ShardError(f"{self.where(e.name)}: {size} bytes, the manifest says {e.bytes}: the shard was cut "
                                 f"short or changed after the build; run 'medprep verify {self.root}' and rebuild")
            yield e, f

    def read_shard(self, shard: str | ShardEntry, entries: Collection[str] | None = None, stride: int = 1,
                   offset: int = 0, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        """Samples of one shard in tar order, as dicts with ``__key__``, ``__url__`` and the bytes of ``entries``
        (all when None); only samples whose number is ``offset`` modulo ``stride`` and in ``[start, stop)`` (see
        ``tar.stream_samples``)."""
        with self.open_shard(shard) as (e, f):
            yield from tar.stream_samples(f, self.where(e.name), expected=e.nsamples, entries=entries, stride=stride,
                                          offset=offset, url=self.url(e.name), start=start, stop=stop)

    def index_shard(self, shard: str | ShardEntry) -> ShardIndex:
        """The offset index of one shard (its tar headers only), checked against the manifest."""
        with self.open_shard(shard) as (e, f):
            return ShardIndex(f, self.where(e.name), expected=e.nsamples)

    def fetch(self, shard: str | ShardEntry, index: ShardIndex, j: int,
              entries: Collection[str] | None = None) -> dict[str, Any]:
        """Sample ``j`` of ``shard`` (indexed by ``index``) with one ranged read, then a generation check."""
        e = self.entry(shard)
        lo, hi = index.span(j, entries)
        url = self.url(e.name)
        fs, path = self._fs_path(url)
        try:
            blob = fs.cat_file(path, start=lo, end=hi) if hi > lo else b""
        except FileNotFoundError:
            self.check_generation(e.name)
            raise ShardError(f"{self.where(e.name)}: missing; run 'medprep verify {self.root}'") from None
        self.check_generation(e.name)
        return index.cut(j, blob, lo, entries, url)

    def wids_shards(self, split: str) -> list[ShardEntry]:
        """The shards of ``split`` as its ``<split>.wids.json`` lists them, checked against the manifest."""
        url = self.wids_url(split)
        try:
            doc = fsio.read_json(url)
        except FileNotFoundError:
            raise FileNotFoundError(f"no wids index {url}: {self.root} has splits "
                                    f"{', '.join(self.manifest.splits()) or 'none'}") from None
        except ValueError as e:
            raise ValueError(f"{url} is not JSON ({e}); run 'medprep verify {self.root}'") from None
        shards = self.manifest.shards_of(split)
        problems = wids_problems(doc, shards)
        if problems:
            raise ValueError(f"{url} disagrees with {MANIFEST}: {'; '.join(problems)}; run 'medprep verify "
                             f"{self.root}'")
        return shards


#: a built dataset: its folder or fsspec URL, its manifest.json, or an opened one
DatasetRef = str | os.PathLike | BuiltDataset


def open_dataset(root: DatasetRef) -> BuiltDataset:
    """Open a built dataset by path/URL (idempotent on an already opened one)."""
    return root if isinstance(root, BuiltDataset) else BuiltDataset(root)


def open_datasets(sources: DatasetRef | Sequence[DatasetRef]) -> list[BuiltDataset]:
    """Open one or several built datasets (folders, fsspec URLs, their manifest.json, or opened ones)."""
    if isinstance(sources, (str, os.PathLike, BuiltDataset)):
        sources = [sources]
    out = []
    for s in sources:
        if not isinstance(s, BuiltDataset) and str(s).endswith(MANIFEST):
            s = str(s)[: -len(MANIFEST)]
        out.append(open_dataset(s))
    if not out:
        raise ValueError("no sources given: expected one or more built dataset folders (holding manifest.json)")
    return out
