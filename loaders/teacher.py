"""Student side of the teacher cache: features by sample key over the runs of a store, shard samples joined with
their features, and an SA-1B image stream for pure distillation.

- :class:`TeacherFeatures` reads one, several or all runs of a store as one corpus, by key (keys are unique per
  dataset, so a store caching several datasets serves a ``MedShards`` mix of them).
- :class:`TeacherJoin` / :func:`teacher_shards` add each sample's teacher features to ``MedShards`` samples, after
  checking that every dataset was cached from this very build.
- :class:`SA1BStream` yields SA-1B images (preprocessed as a student expects) with their features: no masks.

A store is data: nothing here imports or calls anything its attrs name.
"""

from __future__ import annotations

import io
import math
import multiprocessing
from collections import Counter
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from medprep.manifests import BuiltDataset, MemberIndex, NotFound, fs_and_path, join
from medprep.manifests.features import FeatureReader, in_fraction, runs as store_runs
from medprep.manifests.pixels import longest_side

from . import partition, state
from .fields import minmax, normalize_image

#: the run attrs that name a teacher: runs read together must agree on them
TEACHER_ATTRS = ("encoder", "encoder_kwargs", "checkpoint_sha256", "preprocess", "feature_shape")


class TeacherFeatures:
    """Random access by sample key to the features of runs of a teacher store (int8/bfloat16 decoded to float32).

    ``run``: one run name, a list of names, or None for every run of the store. The runs must come from one teacher
    (same encoder, checkpoint, preprocessing and feature shape) and no key may be in two of them; both are
    checked here, with the runs named. Picklable (reopens the store), so it works in DataLoader workers.
    """

    def __init__(self, store: str, run: str | Sequence[str] | None = None):
        self._open(store, run)

    def _open(self, url: str, run: str | Sequence[str] | None) -> None:
        names = store_runs(url) if run is None else [run] if isinstance(run, str) else list(run)
        if not names:
            raise ValueError(f"teacher store {url} holds no runs: create them with 'medprep cache-teacher'")
        self.url = url
        self.readers = [FeatureReader.open(url, name) for name in names]
        _same_teacher(self.readers, url)
        self._index: dict[str, tuple[int, int]] = {}
        for r, reader in enumerate(self.readers):
            for i, key in enumerate(reader.keys()):
                self._index.setdefault(key, (r, i))
        total = sum(reader.n for reader in self.readers)
        if len(self._index) != total:
            self._ambiguous()
        self._done = [reader.done() for reader in self.readers]

    def _ambiguous(self) -> None:
        counts = Counter(k for reader in self.readers for k in reader.keys())
        dup = sorted(k for k, n in counts.items() if n > 1)
        holders = [reader.run for reader in self.readers if dup[0] in set(reader.keys())]
        raise ValueError(
            f"{len(dup)} sample keys are in more than one run of teacher store {self.url} (e.g. {dup[0]!r} in "
            f"{holders}): a key must name one feature; choose the runs to read with run=[...] (--teacher-run)")

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "runs": self.runs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._open(state["url"], state["runs"])

    def __repr__(self) -> str:
        which = f"run={self.runs[0]!r}" if len(self.runs) == 1 else f"runs={self.runs}"
        return (f"TeacherFeatures({self.url!r}, {which}, samples={len(self)}, "
                f"done={int(sum(d.sum() for d in self._done))}, dtype={self.readers[0].dtype!r}, "
                f"views={self.views}, feature_shape={self.feature_shape})")

    @property
    def runs(self) -> list[str]:
        """The names of the runs read, in order."""
        return [reader.run for reader in self.readers]

    @property
    def views(self) -> list[str]:
        """The views every run holds (see :meth:`has_view` for one sample's)."""
        return [v for v in self.readers[0].views if all(v in r.views for r in self.readers)]

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every feature."""
        return tuple(self.readers[0].attrs["feature_shape"])

    def keys(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def is_done(self, key: str) -> bool:
        """Whether ``key`` is in the store and its features were written when the store was opened (a sample the
        cache skipped, e.g. an unreadable image under ``--max-failures``, is in the store but never done)."""
        where = self._index.get(key)
        return where is not None and bool(self._done[where[0]][where[1]])

    def locate(self, key: str) -> tuple[FeatureReader, int]:
        """The run holding ``key`` and its row; a ``KeyError`` that says what to do when it is missing or not
        cached yet."""
        where = self._index.get(key)
        if where is None:
            example = next(iter(self._index), None)
            raise NotFound(
                f"sample {key!r} is not in teacher store {self.url} (runs {self.runs}; {len(self)} keys, e.g. "
                f"{example!r}): the store was cached from another dataset or split; run 'medprep cache-teacher' "
                f"on this one")
        r, i = where
        if not self._done[r][i]:
            self._done[r] = self.readers[r].done()  # another worker may have finished it since
            if not self._done[r][i]:
                raise NotFound(f"sample {key!r} of {self.url}/{self.runs[r]} is not cached yet; rerun "
                               f"'medprep cache-teacher' to finish the run")
        return self.readers[r], i

    def has_view(self, key: str, view: str) -> bool:
        """Whether the run holding ``key`` cached ``view``."""
        return view in self.locate(key)[0].views

    def get(self, key: str, view: str = "identity", dtype: str = "float32") -> np.ndarray | torch.Tensor:
        """Features ``(C, H, W)`` of ``key`` in ``view`` (identity or hflip): ``dtype="float32"``, a float32 numpy
        array (int8 and bfloat16 decoded); ``"stored"``, a torch tensor in the stored dtype (float16, bfloat16,
        float32 or int8 with :meth:`scale`), to decode where it is used (:func:`dequantise`, e.g. on the GPU).

        Raises :class:`~medprep.manifests.features.DamagedStore` naming the key and run when its chunk fails its
        checksum, is missing, or holds NaN/Inf.
        """
        values, _, kind = self._read([key], view, dtype)
        return values[0] if dtype == "float32" else _tensor(values, kind)[0]

    __getitem__ = get

    def scale(self, key: str, view: str = "identity") -> torch.Tensor:
        """The float16 per-channel scale ``(C,)`` of an int8 run's features of ``key``: x = q * scale."""
        reader, i = self.locate(key)
        if reader.dtype != "int8":
            raise ValueError(f"run {reader.run!r} of {self.url} stores {reader.dtype} features: only int8 ones "
                             f"have a scale")
        return self.get_batch([key], view, "stored")["teacher_scale"][0]

    def get_batch(self, keys: Sequence[str], view: str = "identity", dtype: str = "float32") -> dict[str, torch.Tensor]:
        """Features of several keys in one read per zarr shard: ``{"teacher": (B, C, H, W)}`` as :meth:`get`'s
        ``dtype`` (always torch), plus ``"teacher_scale"`` (float16 ``(B, C)``) for stored int8 features."""
        values, scale, kind = self._read(keys, view, dtype)
        out = {"teacher": _tensor(values, kind)}
        if scale is not None:
            out["teacher_scale"] = torch.from_numpy(scale)
        return out

    def _read(self, keys: Sequence[str], view: str, dtype: str) -> tuple[np.ndarray, np.ndarray | None, str]:
        """The features of ``keys`` ``(B, C, H, W)`` as ``dtype`` asks (bfloat16 as its int16 bits), the float16
        scales ``(B, C)`` of stored int8 ones (else None), and the dtype they are in."""
        _check_dtype(dtype)
        located = [self.locate(key) for key in keys]
        stored = {r.dtype for r, _ in located}
        if dtype == "stored" and len(stored) > 1:
            raise ValueError(f"the runs {self.runs} of {self.url} store features as {sorted(stored)}: one batch in "
                             f"the stored dtype needs one; read them with dtype='float32'")
        kind = next(iter(stored)) if dtype == "stored" else "float32"
        values = _aligned_empty((len(keys), *self.feature_shape), "int16" if kind == "bfloat16" else kind)
        scale = np.empty((len(keys), self.feature_shape[0]), np.float16) if kind == "int8" else None
        groups: dict[int, list[int]] = {}
        for b, (reader, _) in enumerate(located):
            groups.setdefault(id(reader), []).append(b)
        for batch in groups.values():
            located[batch[0]][0].read_into([located[b][1] for b in batch], view, values, scale, at=batch)
        return values, scale, kind

    def valid_mask(self, key: str, view: str = "identity") -> np.ndarray:
        """Boolean ``(H, W)`` mask of the cells that see image content (False over padding)."""
        reader, i = self.locate(key)
        return reader.valid_mask(i, view)

    def check_sources(self, datasets: Iterable[BuiltDataset], allow_mismatch: bool = False) -> None:
        """Check that each built dataset was cached into one of the runs from this very build.

        A run records its source's generation (and manifest sha256); a dataset rebuilt since (other pixels under
        the same keys, e.g. ``--resize longest``) is refused naming both, unless ``allow_mismatch``. A dataset
        with no run at all is refused too (every one of its samples would miss).
        """
        sources = {r.run: r.attrs.get("source") or {} for r in self.readers}  # older runs may record none
        for ds in datasets:
            cached = [r for r in self.readers if sources[r.run].get("kind") == "medical"
                      and sources[r.run].get("dataset") == ds.name]
            if not cached:
                have = sorted({str(s.get("dataset") or s.get("kind") or "not recorded") for s in sources.values()})
                raise ValueError(f"no run of teacher store {self.url} (runs {self.runs}, sources {have}) was cached "
                                 f"from dataset {ds.name!r} ({ds.root}): run 'medprep cache-teacher --source "
                                 f"{ds.root} --out {self.url}'")
            for reader in cached:
                src = sources[reader.run]
                if _same_build(src, ds) or allow_mismatch:
                    continue
                raise ValueError(
                    f"run {reader.run!r} of teacher store {self.url} was cached from {src.get('url')} (generation "
                    f"{src.get('generation')}, manifest sha256 {src.get('manifest_sha256')}), but {ds.root} is "
                    f"another build of {ds.name!r} (generation {ds.generation}, manifest sha256 "
                    f"{ds.manifest_sha256}): the same keys may hold other pixels. Cache this build "
                    f"('medprep cache-teacher --source {ds.root}') or, if you know the images are the same, pass "
                    f"allow_mismatch=True (--allow-source-mismatch)")


def _check_dtype(dtype: str) -> None:
    if dtype not in ("float32", "stored"):
        raise ValueError(f"dtype={dtype!r}: expected 'float32' (decoded) or 'stored' (as stored, to decode with "
                         f"dequantise)")


def _aligned_empty(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """An uninitialised C-contiguous array starting on a 64-byte cache line, as torch's are: the decode kernels'
    vector stores then never straddle two lines (malloc's 16-byte alignment made a read up to 1.2x slower)."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _tensor(values: np.ndarray, kind: str) -> torch.Tensor:
    """Features read as ``kind`` as a tensor sharing their memory (bfloat16: its int16 bits reinterpreted)."""
    x = torch.from_numpy(values)
    return x.view(torch.bfloat16) if kind == "bfloat16" else x


def dequantise(teacher: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 features from features read with ``dtype="stored"`` (``(..., C, H, W)``; int8 needs their
    ``scale`` ``(..., C)``), on whatever device they are: move the stored bytes, decode there."""
    if teacher.dtype == torch.int8:
        if scale is None:
            raise ValueError("int8 features need their scale (teacher_scale) to be decoded")
        return teacher.float() * scale.float()[..., None, None]
    return teacher.float()


def _same_build(source: dict[str, Any], ds: BuiltDataset) -> bool:
    """Whether a run's recorded medical source is the build ``ds`` (by generation, else by manifest sha256)."""
    if source.get("generation"):
        return source["generation"] == ds.generation
    return source.get("manifest_sha256") == ds.manifest_sha256


def _same_teacher(readers: list[FeatureReader], url: str) -> None:
    """Refuse runs that come from different teachers (or preprocessings), naming each group."""
    groups: dict[str, list[FeatureReader]] = {}
    for reader in readers:
        groups.setdefault(repr([reader.attrs.get(k) for k in TEACHER_ATTRS]), []).append(reader)
    if len(groups) > 1:
        names = "; ".join(
            f"{[r.run for r in group]}: {group[0].attrs.get('encoder')} {group[0].attrs.get('encoder_kwargs') or ''} "
            f"(checkpoint sha256 {str(group[0].attrs.get('checkpoint_sha256'))[:12]}, features "
            f"{group[0].attrs.get('feature_shape')})" for group in groups.values())
        raise ValueError(f"the runs of teacher store {url} come from {len(groups)} different teachers or "
                         f"preprocessings ({names}): a student distils one; choose the runs with run=[...] "
                         f"(--teacher-run)")


def _flip(sample: dict[str, Any]) -> dict[str, Any]:
    """Every tensor of two or more dimensions flipped along its last axis."""
    return {k: v.flip(-1) if isinstance(v, torch.Tensor) and v.ndim >= 2 else v for k, v in sample.items()}


class TeacherJoin(torch.utils.data.IterableDataset):
    """Samples (dicts with ``key`` or ``__key__``, e.g. from ``MedShards``) joined with their teacher features.

    Adds ``teacher`` (float32 ``(C, H, W)``), ``teacher_valid`` (bool ``(H, W)``, False over padding) and
    ``teacher_view``; ``dtype="stored"``: ``teacher`` as stored (plus ``teacher_scale`` for int8), to decode with
    :func:`dequantise` after the move to the GPU. A key missing from the store raises ``KeyError``: nothing is
    skipped silently. When ``samples`` names its built datasets (``MedShards``, ``MedShardsIndexed``), each must
    have been cached from this very build (:meth:`TeacherFeatures.check_sources`; ``allow_mismatch`` overrides).

    ``hflip``: probability of flipping a sample; every tensor of two or more dimensions (image, mask, patch grids,
    ``(C, H, W)`` layout) is flipped along its last axis and the target is the teacher's feature of the flipped
    image. Samples of a run cached without the hflip view are never flipped (their ``teacher_view`` says
    identity); at least one run must hold it. The draw depends on ``(seed, epoch, key)`` only. Do not combine with
    geometric augmentation upstream: the stored targets would no longer match.
    """

    def __init__(self, samples: Iterable[dict[str, Any]], features: TeacherFeatures, hflip: float = 0.0,
                 seed: int = 0, allow_mismatch: bool = False, dtype: str = "float32"):
        if hflip and not any("hflip" in r.views for r in features.readers):
            raise ValueError(f"hflip={hflip} needs the hflip view, but the runs {features.runs} hold only "
                             f"{features.views}: cache them with --views identity,hflip")
        datasets = getattr(samples, "datasets", None)
        if datasets is not None:
            features.check_sources(datasets, allow_mismatch)
        _check_dtype(dtype)
        self.samples, self.features, self.hflip, self.seed, self.epoch = samples, features, hflip, seed, 0
        self.dtype = dtype

    def __repr__(self) -> str:
        return (f"TeacherJoin({self.samples!r}, {self.features!r}, hflip={self.hflip}, seed={self.seed}, "
                f"dtype={self.dtype!r})")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.samples, "set_epoch"):
            self.samples.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The state of ``samples`` (``MedShards``: see its ``state_dict``) with this join's epoch and draws."""
        inner = self.samples.state_dict() if hasattr(self.samples, "state_dict") else None
        return {**self._identity(), "epoch": self.epoch, "samples": inner}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from ``saved`` (``state_dict()``, or ``merge_states`` of several): ``samples`` loads its part."""
        state.check(saved, self._identity(), self)
        if saved["samples"] is None or not hasattr(self.samples, "load_state_dict"):
            raise ValueError(f"{self.samples!r} keeps no state: a TeacherJoin resumes over a reader that does "
                             f"(MedShards)")
        self.epoch = saved["epoch"]
        self.samples.load_state_dict(saved["samples"])

    def _identity(self) -> dict[str, Any]:
        return {"kind": "TeacherJoin", "version": state.VERSION, "hflip": self.hflip, "seed": self.seed,
                "runs": self.features.runs}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.samples:
            key = sample["__key__"] if "__key__" in sample else sample["key"]
            view = _view(key, self.hflip, self.seed, self.epoch, self.features)
            if view == "hflip":
                sample = _flip(sample)
            yield {**sample, **_teacher_fields(self.features, key, view, self.dtype)}


def _teacher_fields(features: TeacherFeatures, key: str, view: str, dtype: str) -> dict[str, Any]:
    """``teacher`` (and ``teacher_scale`` for stored int8), ``teacher_valid`` and ``teacher_view`` of a sample."""
    fields = {name: x[0] for name, x in features.get_batch([key], view, dtype).items()}
    return {**fields, "teacher_valid": torch.from_numpy(features.valid_mask(key, view)), "teacher_view": view}


def _view(key: str, hflip: float, seed: int, epoch: int, features: TeacherFeatures) -> str:
    """The view drawn for ``key`` this epoch: hflip with probability ``hflip`` where its run holds it."""
    if hflip and in_fraction(f"{epoch}:{key}", hflip, seed) and features.has_view(key, "hflip"):
        return "hflip"
    return "identity"


def teacher_shards(dataset: Any, store: str, run: str | Sequence[str] | None = None, split: str = "train",
                   hflip: float = 0.0, seed: int = 0, allow_mismatch: bool = False, dtype: str = "float32",
                   **medshards: Any) -> TeacherJoin:
    """``MedShards(dataset, split, **medshards)`` (one built dataset or several) joined with the features of
    ``store`` (``run``: one, several or, by default, all of its runs)."""
    from .shards import MedShards

    return TeacherJoin(MedShards(dataset, split, seed=seed, **medshards), TeacherFeatures(store, run), hflip, seed,
                       allow_mismatch, dtype)


class SA1BStream(state.Resumable, torch.utils.data.IterableDataset):
    """SA-1B images with their teacher features, for the pure distillation stage (no masks).

    Reads the SA-1B runs of ``store`` (``run=None``: every run cached from SA-1B tars) and the ``sa_N.jpg`` images
    of their recorded tars in place (``tars``: the folder or tar list they are in now, when they moved). Yields
    dicts: ``key``; ``image`` float32 ``(3, size, size)``, the image resized as the teacher saw it (longest side to
    ``size``, padded bottom/right with 0 after normalising with ``normalize``, e.g. ``sam``); ``teacher``,
    ``teacher_valid``, ``teacher_view`` as :class:`TeacherJoin`. ``hflip`` and ``dtype`` as :class:`TeacherJoin`.

    Every cached sample once per epoch (one the cache skipped, an unreadable image, is left out): the tars, shuffled by ``(seed, epoch)``, are cut into ``partitions``
    canonical partitions (a tar shared by several is split by its images), each shuffled through a
    ``shuffle_buffer`` of keys by ``(seed, epoch, partition)`` and read by one of the ranks x DataLoader workers;
    call ``set_epoch`` before each epoch. ``state_dict`` / ``load_state_dict`` / ``merge_states`` resume an epoch
    as ``MedShards`` does; a tar's member list (its headers) is read again on resume, never its consumed images.
    """

    def __init__(self, store: str, run: str | Sequence[str] | None = None, size: int = 1024, normalize: str = "sam",
                 hflip: float = 0.0, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 256,
                 tars: str | Sequence[str] | None = None, rank: int | None = None, world_size: int | None = None,
                 dtype: str = "float32", partitions: int = partition.PARTITIONS):
        _check_dtype(dtype)
        if run is None:
            run = [name for name in store_runs(store)
                   if FeatureReader.open(store, name).attrs["source"].get("kind") == "sa1b"]
            if not run:
                raise ValueError(f"teacher store {store} has no run cached from SA-1B tars (runs "
                                 f"{store_runs(store)}): join medical runs with TeacherJoin instead")
        self.features = TeacherFeatures(store, run)
        for reader in self.features.readers:
            if reader.attrs["source"].get("kind") != "sa1b":
                raise ValueError(f"run {reader.run!r} of {store} was cached from a {reader.attrs['source']['kind']} "
                                 f"source, not SA-1B tars: join it with MedShards through TeacherJoin")
        if hflip and not any("hflip" in r.views for r in self.features.readers):
            raise ValueError(f"hflip={hflip} needs the hflip view, but the runs {self.features.runs} hold only "
                             f"{self.features.views}: cache them with --views identity,hflip")
        moved = _tar_urls(tars) if tars is not None else None
        self.tars: list[str] = []
        for reader in self.features.readers:
            for url in reader.attrs["source"]["url"]:
                name = url.rstrip("/").rsplit("/", 1)[-1]
                if moved is not None and name not in moved:
                    raise FileNotFoundError(f"tar {name} of run {reader.run!r} is not among tars={tars}")
                path = moved[name] if moved is not None else url
                if path not in self.tars:
                    self.tars.append(path)
        self.size, self.normalize, self.hflip, self.seed, self.dtype = size, normalize, hflip, seed, dtype
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.rank, self.world_size, self.partitions = rank, world_size, partitions
        partition.distributed_rank(rank, world_size)  # validate early
        self._epoch = multiprocessing.RawValue("q", 0)  # shared with (persistent) DataLoader workers

    def __repr__(self) -> str:
        return (f"SA1BStream({self.features!r}, tars={len(self.tars)}, size={self.size}, "
                f"normalize={self.normalize!r}, hflip={self.hflip})")

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Set before each epoch (it reaches persistent workers): the order and the hflip draws depend on it. A
        loaded state of another epoch is dropped."""
        self._epoch.value = epoch
        self._keep_resume(epoch)

    def _identity(self) -> dict[str, Any]:
        return {"kind": "SA1BStream", "version": state.VERSION, "runs": self.features.runs,
                "tars": state.fingerprint(t.rstrip("/").rsplit("/", 1)[-1] for t in self.tars),
                "samples": len(self.features), "seed": self.seed, "shuffle_buffer": self.shuffle_buffer,
                "hflip": self.hflip, "partitions": self.partitions}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        consumer = partition.current_consumer(self.rank, self.world_size)
        epoch = self.epoch
        cursors = self._begin(consumer)["cursors"]
        n = len(self.tars)
        order = partition.rng(self.seed, epoch).permutation(n) if self.shuffle_buffer else np.arange(n)
        # every tar counts as `partitions` units, so tars are split among partitions when there are fewer of them
        blocks = partition.Blocks([self.partitions] * n, order, self.partitions)
        members = _CachedMembers(self.tars, self.features, self.partitions)
        for p in partition.visit_order(partition.owned(consumer, self.partitions), self.seed, epoch,
                                       bool(self.shuffle_buffer)):
            for _, (index, member, key) in partition.resumable(
                    blocks.runs(p), members.count, members.read, members.fetch, self.shuffle_buffer,
                    partition.rng(self.seed, epoch, 2, p), cursors[p]):
                cursors[p] += 1
                yield self._sample(index, member, key)

    def _sample(self, index: MemberIndex, member: str, key: str) -> dict[str, Any]:
        view = _view(key, self.hflip, self.seed, self.epoch, self.features)
        try:  # PIL, as the cache decoded it
            with Image.open(io.BytesIO(index.read(member))) as im:
                image = np.asarray(im.convert("RGB"))
        except OSError as e:  # PIL names its buffer (<_io.BytesIO ...>), not the member
            raise ValueError(f"SA-1B tar {index.url}, member {member} is not a decodable image "
                             f"({str(e).split(' <_io.BytesIO')[0]})") from None
        if view == "hflip":
            image = image[:, ::-1]
        return {"key": key, "image": student_image(image, self.size, self.normalize),
                **_teacher_fields(self.features, key, view, self.dtype)}


class _CachedMembers:
    """The cached images of SA-1B tars as ``(tar, start, stop)`` runs in units of ``1/units`` of a tar's cached
    images (the member list of a tar is read when one of its runs is first counted)."""

    def __init__(self, tars: list[str], features: TeacherFeatures, units: int):
        self.tars, self.features, self.units = tars, features, units
        self._cached: dict[int, tuple[MemberIndex, list[tuple[str, str]]]] = {}

    def _of(self, tar: int) -> tuple[MemberIndex, list[tuple[str, str]]]:
        if tar not in self._cached:
            index = MemberIndex(self.tars[tar])
            self._cached[tar] = index, [(m, key) for m in index.members if m.endswith(".jpg")
                                        and self.features.is_done(key := f"sa1b-{m.removesuffix('.jpg')}")]
        return self._cached[tar]

    def _bounds(self, run: tuple[int, int, int]) -> tuple[int, int]:
        tar, start, stop = run
        n = len(self._of(tar)[1])
        return start * n // self.units, stop * n // self.units

    def count(self, run: tuple[int, int, int]) -> int:
        lo, hi = self._bounds(run)
        return hi - lo

    def fetch(self, run: tuple[int, int, int], k: int) -> tuple[MemberIndex, str, str]:
        index, cached = self._of(run[0])
        member, key = cached[self._bounds(run)[0] + k]
        return index, member, key

    def read(self, run: tuple[int, int, int], k: int) -> Iterator[tuple[MemberIndex, str, str]]:
        lo, hi = self._bounds(run)
        return (self.fetch(run, j) for j in range(k, hi - lo))


def student_image(image: np.ndarray, size: int, normalize: str) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> float32 ``(3, size, size)``: longest side to ``size`` (area interpolation when
    shrinking, linear when enlarging), normalised with ``normalize`` (``minmax``: over the resized image, as
    LiteMedSAM), padded bottom/right with 0 (SAM's geometry, so the teacher's embedding cells cover the same
    pixels)."""
    h, w = longest_side(image.shape[0], image.shape[1], size)
    if (h, w) != image.shape[:2]:
        shrink = h < image.shape[0]
        image = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA if shrink
                           else cv2.INTER_LINEAR)
    out = torch.zeros((3, size, size), dtype=torch.float32)
    image = np.ascontiguousarray(image)
    if normalize == "minmax":
        out[:, :h, :w] = minmax(image, np.ones((h, w), bool), float(image.min()), float(image.max()))
    else:
        out[:, :h, :w] = normalize_image(image, normalize)
    return out


def _tar_urls(tars: str | Sequence[str]) -> dict[str, str]:
    """``{tar name: url}`` of a folder of ``sa_NNNNNN.tar`` files or of a list of tars."""
    if isinstance(tars, str):
        fs, path = fs_and_path(tars)
        urls = [tars] if fs.isfile(path) else [join(tars, p.rstrip("/").rsplit("/", 1)[-1])
                                                for p in fs.ls(path, detail=False) if p.endswith(".tar")]
    else:
        urls = list(tars)
    return {u.rstrip("/").rsplit("/", 1)[-1]: u for u in urls}


__all__ = ["SA1BStream", "TeacherFeatures", "TeacherJoin", "dequantise", "student_image", "teacher_shards"]
