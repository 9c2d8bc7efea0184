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
import multiprocessing
from collections import Counter
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from medprep.manifests import BuiltDataset, MemberIndex, fs_and_path, join
from medprep.manifests.features import FeatureReader, in_fraction, runs as store_runs
from medprep.manifests.pixels import longest_side

from . import partition
from .fields import minmax, normalise

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

    def locate(self, key: str) -> tuple[FeatureReader, int]:
        """The run holding ``key`` and its row; a ``KeyError`` that says what to do when it is missing or not
        cached yet."""
        where = self._index.get(key)
        if where is None:
            example = next(iter(self._index), None)
            raise KeyError(
                f"sample {key!r} is not in teacher store {self.url} (runs {self.runs}; {len(self)} keys, e.g. "
                f"{example!r}): the store was cached from another dataset or split; run 'medprep cache-teacher' "
                f"on this one")
        r, i = where
        if not self._done[r][i]:
            self._done[r] = self.readers[r].done()  # another worker may have finished it since
            if not self._done[r][i]:
                raise KeyError(f"sample {key!r} of {self.url}/{self.runs[r]} is not cached yet; rerun "
                               f"'medprep cache-teacher' to finish the run")
        return self.readers[r], i

    def has_view(self, key: str, view: str) -> bool:
        """Whether the run holding ``key`` cached ``view``."""
        return view in self.locate(key)[0].views

    def get(self, key: str, view: str = "identity") -> np.ndarray:
        """Float32 features ``(C, H, W)`` of ``key`` in ``view`` (identity or hflip)."""
        reader, i = self.locate(key)
        return reader.read(i, view)

    __getitem__ = get

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
        for ds in datasets:
            cached = [r for r in self.readers if r.attrs["source"].get("kind") == "medical"
                      and r.attrs["source"].get("dataset") == ds.name]
            if not cached:
                have = sorted({str(r.attrs["source"].get("dataset") or r.attrs["source"].get("kind"))
                               for r in self.readers})
                raise ValueError(f"no run of teacher store {self.url} (runs {self.runs}, sources {have}) was cached "
                                 f"from dataset {ds.name!r} ({ds.root}): run 'medprep cache-teacher --source "
                                 f"{ds.root} --out {self.url}'")
            for reader in cached:
                src = reader.attrs["source"]
                if _same_build(src, ds) or allow_mismatch:
                    continue
                raise ValueError(
                    f"run {reader.run!r} of teacher store {self.url} was cached from {src['url']} (generation "
                    f"{src.get('generation')}, manifest sha256 {src.get('manifest_sha256')}), but {ds.root} is "
                    f"another build of {ds.name!r} (generation {ds.generation}, manifest sha256 "
                    f"{ds.manifest_sha256}): the same keys may hold other pixels. Cache this build "
                    f"('medprep cache-teacher --source {ds.root}') or, if you know the images are the same, pass "
                    f"allow_mismatch=True (--allow-source-mismatch)")


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
    ``teacher_view``. A key missing from the store raises ``KeyError``: nothing is skipped silently. When
    ``samples`` names its built datasets (``MedShards``, ``MedShardsIndexed``), each must have been cached from
    this very build (:meth:`TeacherFeatures.check_sources`; ``allow_mismatch`` overrides).

    ``hflip``: probability of flipping a sample; every tensor of two or more dimensions (image, mask, patch grids,
    ``(C, H, W)`` layout) is flipped along its last axis and the target is the teacher's feature of the flipped
    image. Samples of a run cached without the hflip view are never flipped (their ``teacher_view`` says
    identity); at least one run must hold it. The draw depends on ``(seed, epoch, key)`` only. Do not combine with
    geometric augmentation upstream: the stored targets would no longer match.
    """

    def __init__(self, samples: Iterable[dict[str, Any]], features: TeacherFeatures, hflip: float = 0.0,
                 seed: int = 0, allow_mismatch: bool = False):
        if hflip and not any("hflip" in r.views for r in features.readers):
            raise ValueError(f"hflip={hflip} needs the hflip view, but the runs {features.runs} hold only "
                             f"{features.views}: cache them with --views identity,hflip")
        datasets = getattr(samples, "datasets", None)
        if datasets is not None:
            features.check_sources(datasets, allow_mismatch)
        self.samples, self.features, self.hflip, self.seed, self.epoch = samples, features, hflip, seed, 0

    def __repr__(self) -> str:
        return f"TeacherJoin({self.samples!r}, {self.features!r}, hflip={self.hflip}, seed={self.seed})"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.samples, "set_epoch"):
            self.samples.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.samples:
            key = sample["__key__"] if "__key__" in sample else sample["key"]
            view = _view(key, self.hflip, self.seed, self.epoch, self.features)
            if view == "hflip":
                sample = _flip(sample)
            yield {
                **sample,
                "teacher": torch.from_numpy(self.features.get(key, view)),
                "teacher_valid": torch.from_numpy(self.features.valid_mask(key, view)),
                "teacher_view": view,
            }


def _view(key: str, hflip: float, seed: int, epoch: int, features: TeacherFeatures) -> str:
    """The view drawn for ``key`` this epoch: hflip with probability ``hflip`` where its run holds it."""
    if hflip and in_fraction(f"{epoch}:{key}", hflip, seed) and features.has_view(key, "hflip"):
        return "hflip"
    return "identity"


def teacher_shards(dataset: Any, store: str, run: str | Sequence[str] | None = None, split: str = "train",
                   hflip: float = 0.0, seed: int = 0, allow_mismatch: bool = False, **medshards: Any) -> TeacherJoin:
    """``MedShards(dataset, split, **medshards)`` (one built dataset or several) joined with the features of
    ``store`` (``run``: one, several or, by default, all of its runs)."""
    from .shards import MedShards

    return TeacherJoin(MedShards(dataset, split, seed=seed, **medshards), TeacherFeatures(store, run), hflip, seed,
                       allow_mismatch)


class SA1BStream(torch.utils.data.IterableDataset):
    """SA-1B images with their teacher features, for the pure distillation stage (no masks).

    Reads the SA-1B runs of ``store`` (``run=None``: every run cached from SA-1B tars) and the ``sa_N.jpg`` images
    of their recorded tars in place (``tars``: the folder or tar list they are in now, when they moved). Yields
    dicts: ``key``; ``image`` float32 ``(3, size, size)``, the image resized as the teacher saw it (longest side to
    ``size``, padded bottom/right with 0 after normalising with ``normalize``, e.g. ``sam``); ``teacher``,
    ``teacher_valid``, ``teacher_view`` as :class:`TeacherJoin`. ``hflip`` as :class:`TeacherJoin`.

    Every cached sample once per epoch: tars are split among ranks x DataLoader workers, each part shuffled through
    a ``shuffle_buffer`` of keys by ``(seed, epoch)``; call ``set_epoch`` before each epoch.
    """

    def __init__(self, store: str, run: str | Sequence[str] | None = None, size: int = 1024, normalize: str = "sam",
                 hflip: float = 0.0, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 256,
                 tars: str | Sequence[str] | None = None, rank: int | None = None, world_size: int | None = None):
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
        self.size, self.normalize, self.hflip, self.seed = size, normalize, hflip, seed
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.rank, self.world_size = rank, world_size
        partition.distributed_rank(rank, world_size)  # validate early
        self._epoch = multiprocessing.RawValue("q", 0)  # shared with (persistent) DataLoader workers

    def __repr__(self) -> str:
        return (f"SA1BStream({self.features!r}, tars={len(self.tars)}, size={self.size}, "
                f"normalize={self.normalize!r}, hflip={self.hflip})")

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Set before each epoch (it reaches persistent workers): the order and the hflip draws depend on it."""
        self._epoch.value = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        consumer = partition.current_consumer(self.rank, self.world_size)
        n = len(self.tars)
        order = partition.rng(self.seed, self.epoch).permutation(n) if self.shuffle_buffer else np.arange(n)
        items = self._members([(self.tars[order[i]], stride, offset)
                               for i, stride, offset in partition.assign(n, consumer)])
        if self.shuffle_buffer:
            items = partition.shuffled(items, self.shuffle_buffer,
                                       partition.rng(self.seed, self.epoch, consumer.index))
        for index, member, key in items:
            yield self._sample(index, member, key)

    def _members(self, parts: list[tuple[str, int, int]]) -> Iterator[tuple[MemberIndex, str, str]]:
        """``(tar index, member, key)`` of the cached images of each part (a tar, or every ``stride``-th of its
        cached images from ``offset`` when consumers share it), in tar order."""
        for url, stride, offset in parts:
            index = MemberIndex(url)
            cached = [(m, key) for m in index.members
                      if m.endswith(".jpg") and (key := f"sa1b-{m.removesuffix('.jpg')}") in self.features]
            for member, key in cached[offset::stride]:
                yield index, member, key

    def _sample(self, index: MemberIndex, member: str, key: str) -> dict[str, Any]:
        view = _view(key, self.hflip, self.seed, self.epoch, self.features)
        try:  # PIL, as the cache decoded it
            with Image.open(io.BytesIO(index.read(member))) as im:
                image = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise ValueError(f"{index.url}: {member} is not a decodable image ({e})") from None
        if view == "hflip":
            image = image[:, ::-1]
        return {
            "key": key,
            "image": student_image(image, self.size, self.normalize),
            "teacher": torch.from_numpy(self.features.get(key, view)),
            "teacher_valid": torch.from_numpy(self.features.valid_mask(key, view)),
            "teacher_view": view,
        }


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
        out[:, :h, :w] = normalise(image, normalize)
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


__all__ = ["SA1BStream", "TeacherFeatures", "TeacherJoin", "student_image", "teacher_shards"]
