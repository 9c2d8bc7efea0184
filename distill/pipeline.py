"""The streaming cache: decode pool -> encoder -> writer thread, overlapped through bounded queues.

Work is partitioned by zarr shard: :func:`write_shards` processes a list of shard indices of an open run, so
several workers (one per GPU) can share a run. Batches never cross a zarr shard, so a shard's features do not
depend on which shards were done before it: a resumed or partitioned run gives the same arrays.

Determinism: every writer of a run encodes with the run's recorded batch size, autocast, attention and (on a CPU)
intra-op thread count (``batch_size``, ``autocast``, ``attention``, ``cpu_threads`` in its attrs), so features are
bit-identical whatever the partition, the resume points or the number of dask workers, on the same kind of device.
Runs made with another batch size or thread count agree within one float16 step at the magnitude of each sample's
largest feature (float32 reductions in another order), not bit for bit.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

import medprep

from medprep.manifests.errors import MedprepError
from medprep.manifests.features import CODEC, FeatureReader

from .attention import resolve_attention, sam_attention_blocks, set_attention
from .events import Encoded, OnEvent, Skipped
from .params import AUTOCASTS, DEFAULT_BATCH_SIZE, CacheExecution, CacheParams
from .preprocess import PREPROCESS_VERSION, Preprocess
from .sources import Source
from .store import FeatureStore
from .teachers import Teacher


class CacheError(MedprepError, RuntimeError):
    """A cache run that cannot complete: an image that cannot be read (beyond ``--max-failures``), a device that is
    not there, a part whose dask worker died every time it ran it."""


Valid = tuple[int, tuple[int, int]]  # valid rows, [x0, x1) valid columns, in embedding cells
SKIPPED: Valid = (-1, (-1, -1))  # the valid region given for a sample whose image could not be read


@dataclass(frozen=True)
class Prepared:
    """One sample ready for the device: host canvas, its valid region in pixels (rows, ``[x0, x1)`` columns) and
    in cells."""

    canvas: torch.Tensor
    region: tuple[int, int, int]
    valid_h: int
    valid_x: tuple[int, int]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def region_cells(region: tuple[int, int, int], stride: int) -> tuple[int, tuple[int, int]]:
    """Valid rows and ``[x0, x1)`` columns in embedding cells of a canvas whose valid pixels are ``region``
    (:meth:`~medprep.distill.preprocess.Preprocess.place`); cells partly covering valid pixels count as valid."""
    rows, x0, x1 = region
    return _ceil_div(rows, stride), (x0 // stride, _ceil_div(x1, stride))


def load_sample(source: Source, i: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Sample ``i`` of ``source`` (RGB uint8, valid pixels), or an error naming it."""
    try:
        return source.load(i)
    except Exception as e:
        raise CacheError(f"cannot read sample {source.keys[i]!r} ({type(e).__name__}: {e}); fix or remove the "
                           f"input, then rerun to resume") from e


def prepare(source: Source, i: int, view: str, pre: Preprocess, stride: int) -> Prepared:
    """Load sample ``i`` of ``source`` and run the host part of the preprocessing for ``view`` (the valid pixels
    resized and placed as the teacher's own code places them: :meth:`Preprocess.place`)."""
    image, valid_px = load_sample(source, i)
    flipped = view == "hflip"
    if flipped:
        image = image[:, ::-1]
    canvas, region = pre.place(image, valid_px, flipped)
    rows, cols = region_cells(region, stride)
    return Prepared(canvas, region, rows, cols)


def resolve_autocast(autocast: str, device: str) -> str:
    """The autocast dtype actually used: ``auto`` is bfloat16 on CUDA and none (float32) elsewhere."""
    if autocast not in AUTOCASTS:
        raise ValueError(f"unknown autocast {autocast!r}: expected one of {AUTOCASTS}")
    if autocast == "auto":
        return "bfloat16" if torch.device(device).type == "cuda" else "none"
    return autocast


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: leave the count), then restore the previous count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Encoder:
    """A teacher on its device: batches of :class:`Prepared` in, float32 CPU features out.

    ``attention="sdpa"`` (or ``auto`` on CUDA) puts the teacher's SAM attention blocks in their
    ``scaled_dot_product_attention`` form, ``reference`` in segment_anything's, in place
    (:func:`~medprep.distill.attention.set_attention`).
    """

    def __init__(self, teacher: Teacher, device: str = "cpu", autocast: str = "auto", compile: bool = False,
                 attention: str = "reference"):
        self.device = check_device(device)
        self.autocast = resolve_autocast(autocast, device)
        self.attention = resolve_attention(attention, device)
        self.pre = teacher.preprocess
        set_attention(teacher.encoder, self.attention)
        self.module = teacher.encoder.to(self.device)
        self.fn = torch.compile(self.module) if compile else self.module

    def launch(self, items: Sequence[Prepared]) -> Callable[[], torch.Tensor]:
        """Start encoding a batch; the returned function waits for it and gives float32 CPU features.

        On CUDA the kernels and the copy back run asynchronously, so the next batch can be queued first.
        """
        canvases = torch.stack([p.canvas for p in items])
        sizes = torch.tensor([p.region for p in items])
        if self.device.type != "cuda":
            out = self.encode(self.pre.device(canvases, sizes))
            return lambda: out
        canvases = canvases.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            y = self.fn(self.pre.device(canvases, sizes))
            host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
            host.copy_(y, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return lambda: (done.synchronize(), host.float())[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch of teacher inputs already normalised ``(B, 3, S, S)``: float32 CPU features."""
        with torch.inference_mode(), self._autocast():
            return self.fn(x.to(self.device)).float().cpu()

    def __call__(self, items: Sequence[Prepared]) -> torch.Tensor:
        """Encode a batch: float32 CPU features ``(B, C, H, W)``."""
        return self.launch(items)()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.autocast))


def feature_shape(teacher: Teacher, device: str = "cpu") -> tuple[int, int, int]:
    """``(C, H, W)`` of the teacher's features: from a SAM ``ImageEncoderViT``'s config, else one forward pass."""
    try:
        from segment_anything.modeling import ImageEncoderViT
    except ImportError:  # segment-anything is optional for teachers from elsewhere
        ImageEncoderViT = ()
    enc = teacher.encoder
    s = teacher.preprocess.img_size
    if isinstance(enc, ImageEncoderViT):  # no forward pass: ViT-H takes a minute on a CPU
        grid = s // enc.patch_embed.proj.kernel_size[0]
        return enc.neck[0].out_channels, grid, grid
    with torch.inference_mode():
        out = enc.to(device)(torch.zeros(1, 3, s, s, device=device))
    return tuple(out.shape[1:])


def check_device(device: str) -> torch.device:
    """The torch device, or a clear error when CUDA is asked for but absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CacheError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def run_attrs(teacher: Teacher, source: Source, params: CacheParams, device: str,
              recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the stored features depend on (the run's identity, recorded in the zarr attrs).

    ``device``: the first worker's (it decides ``autocast=auto`` and ``attention=auto``); ``recorded``: the attrs
    of the run when it exists already, whose batch size and thread count are kept unless ``params`` name others.
    """
    recorded = recorded or {}
    src = source.describe()
    attention = resolve_attention(params.attention, device) if sam_attention_blocks(teacher.encoder) else "reference"
    return {
        **teacher.to_attrs(),
        "preprocess": teacher.preprocess.to_attrs(),
        "preprocess_version": PREPROCESS_VERSION,
        "input_size": teacher.preprocess.img_size,
        "resize": teacher.preprocess.resize,
        "pixel_mean": list(teacher.preprocess.pixel_mean),
        "pixel_std": list(teacher.preprocess.pixel_std),
        "autocast": resolve_autocast(params.autocast, device),
        "attention": attention,
        "batch_size": params.batch_size or recorded.get("batch_size", DEFAULT_BATCH_SIZE),
        "cpu_threads": params.threads or recorded.get("cpu_threads") or torch.get_num_threads(),
        "compile": params.compile,
        "source": src,
        "source_manifest_sha256": src.get("manifest_sha256"),
        "dtype": params.dtype,
        **_codec(params.codec or recorded.get("codec"), recorded),
        "views": list(params.views),
        "shard_samples": params.shard_samples,
        "keep_padding": params.keep_padding,
        "medprep_version": medprep.__version__,
    }


def _codec(codec: str | None, recorded: dict[str, Any]) -> dict[str, str]:
    """The ``codec`` attr of a run: the one asked for, else the recorded one, else :data:`CODEC` for a new run (a
    run created before the attr existed records none: its arrays say their codecs)."""
    return {"codec": codec} if codec else {} if recorded else {"codec": CODEC}


def open_run(params: CacheParams, teacher: Teacher, source: Source, device: str) -> FeatureStore:
    """Create run ``params.run`` of ``params.out`` (or reopen it, refusing other parameters); call it once.

    ``teacher`` and ``source`` are the ones ``params`` names, already loaded (``params.teacher()``,
    ``params.open_source()``). The autocast and attention recorded are those of ``device``, the first worker's.
    """
    check_device(device)
    attrs = run_attrs(teacher, source, params, device, _recorded(params.out, params.run))
    return FeatureStore.create_or_open(params.out, params.run, source.keys, attrs,
                                       lambda: feature_shape(teacher, device))


def _recorded(url: str, run: str) -> dict[str, Any]:
    """The attrs of run ``run`` of ``url`` when it exists and is finished being created, else {}."""
    try:
        return FeatureReader.open(url, run).attrs
    except (FileNotFoundError, KeyError, ValueError):
        return {}


def write_shards(store: FeatureStore, teacher: Teacher, source: Source, params: CacheParams,
                 execution: CacheExecution, shards: Sequence[int], device: str,
                 on_event: OnEvent | None = None) -> list[int]:
    """Encode and write the zarr shards ``shards`` of an open run on ``device``; return those written.

    ``execution.decode_threads`` threads decode and preprocess, the calling thread runs the encoder (with the run's
    batch size, autocast, attention and, on a CPU, intra-op thread count), a writer thread writes whole zarr shards;
    ``execution.prefetch`` bounds the batches decoded ahead. Shards already done are skipped. ``on_event`` receives
    :class:`~medprep.distill.events.Encoded` after every batch.
    """
    a = store.attrs
    encoder = Encoder(teacher, device, a["autocast"], params.compile, a["attention"])
    stride = teacher.preprocess.img_size // a["feature_shape"][1]
    done = store.done_shards()
    todo = [s for s in shards if not done[s]]
    threads = a["cpu_threads"] if encoder.device.type == "cpu" else None
    failed: dict[int, str] = {}

    def on_failure(i: int, error: Exception) -> None:
        """Skip sample ``i`` whose image could not be read, within ``execution.max_failures``; else re-raise."""
        if not execution.max_failures:
            raise error
        if i in failed:  # its other view
            return
        failed[i] = str(error)
        if len(failed) > execution.max_failures:
            listed = "; ".join(f"{source.keys[j]}: {why}" for j, why in failed.items())
            raise CacheError(f"more than --max-failures {execution.max_failures} images of {store.url}/{store.run} "
                               f"could not be read ({listed})") from error
        if on_event is not None:
            on_event(Skipped(source.keys[i], failed[i]))

    with (intra_op_threads(threads),
          ThreadPoolExecutor(execution.decode_threads, thread_name_prefix="medprep-decode") as pool):
        batches = _Prefetch(_batches(todo, store, source, teacher.preprocess, stride, a["batch_size"], pool),
                            execution.prefetch)
        writer = _Writer(store)
        try:
            parts: dict[int, dict[str, list[Part]]] = {}
            shape = tuple(a["feature_shape"])
            for s, view, feats, valid, ok in _encoded(batches, encoder, shape, on_failure):
                shard = parts.setdefault(s, {})
                shard.setdefault(view, []).append((feats, valid, ok))
                if on_event is not None:
                    on_event(Encoded(len(valid)))
                if sum(len(v) for p in shard.values() for _, v, _ in p) == len(store.indices(s)) * len(store.views):
                    writer.put(s, parts.pop(s))  # complete: hand it over at once
        finally:
            batches.close()
            writer.close()
    return todo


def _batches(todo: Sequence[int], store: FeatureStore, source: Source, pre: Preprocess, stride: int,
             batch_size: int, pool: ThreadPoolExecutor) -> Iterator[tuple[int, str, range, list[Future]]]:
    for s in todo:
        idx = store.indices(s)
        for view in store.views:
            for b in range(0, len(idx), batch_size):
                rows = idx[b:b + batch_size]
                yield s, view, rows, [pool.submit(prepare, source, i, view, pre, stride) for i in rows]


#: one encoded batch of a shard and view: features (NaN rows for skipped samples), valid regions, read or skipped
Part = tuple[torch.Tensor, list[Valid], list[bool]]
Launched = tuple[int, str, Callable[[], torch.Tensor] | None, list[Valid], list[bool]]


def _collect(b: Launched, shape: tuple[int, ...]) -> tuple[int, str, torch.Tensor, list[Valid], list[bool]]:
    s, view, wait, valid, ok = b
    got = wait() if wait is not None else None
    if all(ok):
        return s, view, got, valid, ok
    out = torch.full((len(ok), *shape), float("nan"))
    if got is not None:
        out[torch.tensor(ok)] = got
    return s, view, out, valid, ok


def _encoded(batches: Iterator[tuple[int, str, range, list[Future]]], encoder: Encoder, shape: tuple[int, ...],
             on_failure: Callable[[int, Exception], None]
             ) -> Iterator[tuple[int, str, torch.Tensor, list[Valid], list[bool]]]:
    """Encoded batches in order, keeping one batch queued on the device while the previous one is collected.

    A sample whose preparation fails goes to ``on_failure`` (which raises to stop the run); if it returns, the
    sample is skipped: a NaN row, the valid region :data:`SKIPPED`, ``ok`` False."""
    pending: Launched | None = None
    for s, view, rows, futures in batches:
        items: list[Prepared | None] = []
        try:
            for i, f in zip(rows, futures):
                try:
                    items.append(f.result())
                except Exception as e:
                    on_failure(i, e)
                    items.append(None)
        except Exception:
            if pending is not None:  # the batch already encoded still reaches its shard
                yield _collect(pending, shape)
            raise
        good = [p for p in items if p is not None]
        launched = (s, view, encoder.launch(good) if good else None,
                    [SKIPPED if p is None else (p.valid_h, p.valid_x) for p in items], [p is not None for p in items])
        if pending is not None:
            yield _collect(pending, shape)
        pending = launched
    if pending is not None:
        yield _collect(pending, shape)


class _Prefetch:
    """Run an iterator in a thread, ``size`` items ahead, re-raising its errors in the consumer."""

    _END = object()

    def __init__(self, it: Iterator, size: int):
        self._q: queue.Queue = queue.Queue(maxsize=max(size, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), daemon=True, name="medprep-feed")
        self._thread.start()

    def _run(self, it: Iterator) -> None:
        try:
            for item in it:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if self._stop.is_set():
                    return
            self._q.put(self._END)
        except BaseException as e:  # handed to the consumer
            self._q.put(e)

    def __iter__(self) -> Iterator:
        while True:
            item = self._q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the producer (cancelling the decode work it queued) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, tuple):
                for f in item[3]:
                    f.cancel()


class _Writer:
    """A thread that writes finished zarr shards; at most two wait in its queue."""

    def __init__(self, store: FeatureStore):
        self.store = store
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="medprep-writer")
        self._thread.start()

    def put(self, s: int, parts: dict[str, list[Part]]) -> None:
        if self._error is not None:
            raise self._error
        self._q.put((s, parts))

    def _run(self) -> None:
        while (job := self._q.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._write(*job)
            except BaseException as e:
                self._error = e

    def _write(self, s: int, parts: dict[str, list[Part]]) -> None:
        feats = {view: torch.cat([x for x, _, _ in p]) for view, p in parts.items()}
        valid = {view: [v for _, vs, _ in p for v in vs] for view, p in parts.items()}
        skipped = ~np.all([[o for _, _, ok in p for o in ok] for p in parts.values()], axis=0)
        valid_hw = np.array([(h, x1) for h, (_, x1) in valid["identity"]], dtype=np.int32)
        flip = np.array([x for _, x in valid["hflip"]], dtype=np.int32) if "hflip" in valid else None
        self.store.write_shard(s, feats, valid_hw, flip, skipped if skipped.any() else None)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
