"""The cache's parameters (what a run writes, recorded in its attrs) and execution options (how it runs), apart as
the build's are: both built by the CLI or the Python API, validated on construction, and sent unchanged to the
driver and to every worker."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from medprep.manifests.features import CODECS, DTYPES, VIEWS
from medprep.manifests.pixels import NORMALIZATIONS, PER_IMAGE_NORMALIZATIONS, safe_key

from .attention import ATTENTIONS
from .preprocess import RESIZES
from .sources import Source, SourceSpec, open_source
from .teachers import Teacher, load_teacher

AUTOCASTS = ("auto", "bfloat16", "float16", "none")
#: encoder batch size of a new run when none is given (a resumed run keeps its recorded one)
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class CacheParams:
    """What a cache run writes and where: every parameter its features depend on (recorded in the run's attrs, and
    compared when a run is resumed), with the run's place. How the run executes is :class:`CacheExecution`'s, as
    ``medprep build`` keeps its parameters (``BuildParams``) apart from its execution options. ``medprep
    cache-teacher`` has an option of the same name for each field.

    - teacher: ``encoder`` (vit_h, vit_l, vit_b, medsam, random-sam or ``package.module:callable``),
      ``checkpoint``, ``encoder_kwargs`` (for random-sam or a callable), ``normalize`` and ``resize`` (override its
      preprocessing), ``attention`` (auto: SDPA on CUDA for SAM encoders, segment_anything's own elsewhere);
    - source: ``source``, a :class:`SourceSpec` (a plain path or URL means ``SourceSpec(url)``);
    - place: ``out`` (zarr store, path or fsspec URL), ``run`` (group name; default
      ``<encoder>-<source folder name>``);
    - stored values: ``dtype``, ``codec`` (the chunks' compression, one of
      :data:`~medprep.manifests.features.CODECS`; default: the run's recorded one, else
      :data:`~medprep.manifests.features.CODEC`), ``views`` (identity, optionally hflip), ``shard_samples``
      (samples per zarr shard object: the unit of work and of resume), ``keep_padding`` (store the encoder's output
      over the padding too, as ``SamPredictor.features``; default: 0 there, so bytes follow the image's aspect);
    - numerics (recorded, because the features' bits depend on them): ``batch_size`` (default: the run's recorded
      one, else :data:`DEFAULT_BATCH_SIZE`), ``autocast`` (auto: bfloat16 on CUDA, none elsewhere), ``compile``
      and ``threads`` (torch intra-op threads of CPU encoders; default: this process's count when the run is
      created, then the count recorded in the run, so that every writer of a run computes bit-identical features).

    Construction normalises (``str`` paths, tuples, views in store order, the default run name) and raises
    ``ValueError`` naming the option to fix.
    """

    encoder: str
    source: SourceSpec
    out: str
    run: str | None = None
    checkpoint: str | None = None
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: str | None = None
    resize: str | None = None
    dtype: str = "float16"
    codec: str | None = None
    views: tuple[str, ...] = ("identity",)
    shard_samples: int = 16
    keep_padding: bool = False
    batch_size: int | None = None
    autocast: str = "auto"
    compile: bool = False
    attention: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        source = self.source if isinstance(self.source, SourceSpec) else SourceSpec(_url(self.source))
        views = tuple(self.views)
        norm = {
            "source": source, "out": os.fspath(self.out), "views": tuple(v for v in VIEWS if v in views),
            "encoder_kwargs": dict(self.encoder_kwargs),
            "checkpoint": None if self.checkpoint is None else os.fspath(self.checkpoint),
            "run": self.run or _default_run(self.encoder, source.url),
        }
        for name, value in norm.items():
            object.__setattr__(self, name, value)
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown --dtype {self.dtype!r}: expected one of {DTYPES}")
        if self.codec is not None and self.codec not in CODECS:
            raise ValueError(f"unknown --codec {self.codec!r}: expected one of {CODECS}")
        if "identity" not in views or any(v not in VIEWS for v in views):
            raise ValueError(f"--views {list(views)}: expected 'identity' plus optionally 'hflip'")
        normalizations = [*NORMALIZATIONS, *PER_IMAGE_NORMALIZATIONS]
        if self.normalize is not None and self.normalize not in normalizations:
            raise ValueError(f"--normalize {self.normalize!r}: expected one of {normalizations}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"unknown --attention {self.attention!r}: expected one of {ATTENTIONS}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads}: expected at least 1")
        if self.resize is not None and self.resize not in RESIZES:
            raise ValueError(f"--resize {self.resize!r}: expected one of {RESIZES}")
        if self.autocast not in AUTOCASTS:
            raise ValueError(f"unknown --autocast {self.autocast!r}: expected one of {AUTOCASTS}")
        _at_least_one(self, ("shard_samples", "batch_size"))

    def teacher(self) -> Teacher:
        """Load the teacher these parameters name."""
        return load_teacher(self.encoder, self.checkpoint, normalize=self.normalize, resize=self.resize,
                            encoder_kwargs=self.encoder_kwargs)

    def open_source(self) -> Source:
        """Open the source these parameters name."""
        return open_source(self.source)


@dataclass(frozen=True)
class CacheExecution:
    """How a cache run executes, never what it writes (not recorded; a run resumes under other values):

    ``device`` (the encoder's), ``devices`` (one dask worker per entry, e.g. ``("cuda:0", "cuda:1")``; replaces
    ``device``), ``scheduler`` (a running dask scheduler's address), ``decode_threads`` (threads decoding and
    preprocessing images beside the encoder), ``prefetch`` (batches decoded ahead), ``wait`` (seconds to wait for
    another ``cache-teacher`` writing the same run of a local store, then give up naming it), ``max_failures``
    (images of the run that may fail to be read: each is skipped, reported as a
    :class:`~medprep.distill.events.Skipped` event and left not done, so a rerun tries it again; one more stops the
    run; with dask workers the count is per worker). ``medprep cache-teacher`` has an option of the same name for
    each but ``prefetch``.
    """

    device: str = "cuda"
    devices: tuple[str, ...] = ()
    scheduler: str | None = None
    decode_threads: int = 4
    prefetch: int = 4
    wait: float = 0.0
    max_failures: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        if not self.wait >= 0:
            raise ValueError(f"--wait {self.wait}: expected seconds, at least 0")
        if self.max_failures < 0:
            raise ValueError(f"--max-failures {self.max_failures}: expected a count, at least 0")
        _at_least_one(self, ("decode_threads", "prefetch"))

    @property
    def distributed(self) -> bool:
        """Whether the run goes through dask (``devices`` or ``scheduler`` given)."""
        return bool(self.devices or self.scheduler)

    @property
    def worker_devices(self) -> tuple[str, ...]:
        """The device of each worker: ``devices``, else ``device`` alone."""
        return self.devices or (self.device,)


def _at_least_one(options: Any, names: tuple[str, ...]) -> None:
    """Refuse a count of ``names`` below 1 (None: not given), naming its option."""
    for name in names:
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(options, name)}: expected at least 1")


def _url(url: str | os.PathLike | list[str]) -> str | list[str]:
    return [os.fspath(u) for u in url] if isinstance(url, (list, tuple)) else os.fspath(url)


def _default_run(encoder: str, url: str | list[str]) -> str:
    """``<encoder>-<source folder name>``, tar-safe (``vit_h-drive``)."""
    if isinstance(url, list):
        raise ValueError(f"a source given as a list of {len(url)} tars needs an explicit run name (run=/--run)")
    return safe_key(f"{encoder.rpartition(':')[2]}-{os.path.basename(url.rstrip('/'))}")


def per_source(encoder: str, sources: Sequence[SourceSpec | str], out: str | os.PathLike, run: str | None = None,
               **options: Any) -> list[CacheParams]:
    """One :class:`CacheParams` per source, all into the store ``out``: one run each, named after its source
    (``<encoder>-<source folder name>``; ``run`` only with a single source). ``options``: the other fields (how
    the runs execute is a :class:`CacheExecution`, given to :func:`~medprep.distill.cache.cache_corpus`).

    Refuses two sources whose runs would have the same name (rename one folder, or cache them one at a time with
    ``run=``).
    """
    if not sources:
        raise ValueError("no --source given: expected built datasets, SA-1B tars or image folders")
    if run is not None and len(sources) > 1:
        raise ValueError(f"--run {run!r} names one run, but {len(sources)} sources were given: each source gets a "
                         f"run named after it; cache them one at a time to choose the names")
    params = [CacheParams(encoder, spec, out, run, **options) for spec in sources]
    names: dict[str, Any] = {}
    for p in params:
        if p.run in names:
            raise ValueError(f"sources {names[p.run]} and {p.source.url} would both be cached as run {p.run!r}; "
                             f"give one of them another folder name, or cache it alone with --run")
        names[p.run] = p.source.url
    return params


__all__ = ["AUTOCASTS", "DEFAULT_BATCH_SIZE", "CacheExecution", "CacheParams", "per_source"]
