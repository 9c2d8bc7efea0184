"""The GPU part of ``benchmarks/cache.py`` (``--gpu``): a SAM teacher of random weights in the official checkpoint
format, through the real ``--checkpoint`` path, at 1024.

1. fidelity: max |difference| and cosine of the fast path (bf16 autocast + SDPA attention) and of bf16 with the
   reference attention, both against the fp32 reference (segment_anything's attention, no autocast, no TF32);
2. the bare encoder (fast path, optionally ``torch.compile``) over preprocessed images, per batch size: images/s
   and peak GPU memory; the best batch size is kept;
3. the whole pipeline (JPEG decode + resize on CPU threads, overlapped with the GPU; float16 zarr writes) at that
   batch size: images/s, efficiency = pipeline / bare, peak GPU memory.

The same code runs on a CPU with a tiny encoder (``tests/test_distill_attention.py``), so it is exercised without a
GPU; ``python benchmarks/cache.py --gpu --encoder vit_h`` runs it for real and writes ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from medprep.distill import CacheExecution, CacheParams, SA1BSource, Teacher, load_teacher, open_run, write_shards
from medprep.distill.pipeline import Encoder, feature_shape, prepare
from medprep.distill.synthetic import write_sa1b_tar

#: SA-1B's typical image size (h, w)
SA1B_HW = (1500, 2250)


def random_checkpoint(root: Path, encoder: str, encoder_kwargs: dict[str, Any], seed: int = 0) -> Path:
    """A full model of random weights saved as a ``state_dict`` .pth, the official checkpoints' format
    (``sam_model_registry[encoder]()`` for SAM; the encoder alone for ``random-sam``)."""
    path = root / f"{encoder}-random-{seed}.pth"
    if path.exists():
        return path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if encoder == "random-sam":
            model = load_teacher(encoder, encoder_kwargs={**encoder_kwargs, "seed": seed}).encoder
        else:
            from segment_anything import sam_model_registry

            model = sam_model_registry["vit_b" if encoder == "medsam" else encoder]()
    torch.save(model.state_dict(), path)
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[list[int]]:
    """Yields a list that holds, after the block, the peak GPU memory allocated in it (bytes; [] on a CPU)."""
    out: list[int] = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        sync(device)
        out.append(torch.cuda.max_memory_allocated(device))


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """fp32 matmuls and convolutions in full precision (the reference)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def fidelity(teacher: Teacher, prepared: list, device: str) -> dict[str, dict[str, float]]:
    """Max abs difference, max abs reference value and minimum cosine of the bf16 paths (and fp32 + SDPA)
    against the fp32 reference."""
    reference = Encoder(copy.deepcopy(teacher), device, "none", attention="reference")
    with no_tf32():
        ref = torch.cat([reference([p]) for p in prepared])
    del reference
    out = {}
    for name, attention in (("bf16 + sdpa", "sdpa"), ("bf16 + reference attention", "reference")):
        fast = Encoder(copy.deepcopy(teacher), device, "bfloat16", attention=attention)
        got = torch.cat([fast([p]) for p in prepared])
        del fast
        cos = torch.nn.functional.cosine_similarity(got.flatten(1).double(), ref.flatten(1).double(), dim=1)
        out[name] = {"max_abs": float((got - ref).abs().max()), "ref_max_abs": float(ref.abs().max()),
                     "cosine_min": float(cos.min())}
    fp32 = Encoder(copy.deepcopy(teacher), device, "none", attention="sdpa")
    with no_tf32():
        got = torch.cat([fp32([p]) for p in prepared])
    out["fp32 + sdpa"] = {"max_abs": float((got - ref).abs().max()), "ref_max_abs": float(ref.abs().max()),
                          "cosine_min": 1.0}
    return out


def bare(encoder: Encoder, prepared: list, batch_size: int, repeats: int = 2) -> tuple[float, list[int]]:
    """Images/s of the encoder alone over ``prepared`` (cycled to ``repeats`` x 2 batches after a warm-up batch),
    and the peak GPU memory."""
    batch = [prepared[i % len(prepared)] for i in range(batch_size)]
    with peak_memory(encoder.device) as mem:
        encoder(batch)  # warm-up (and compilation)
        sync(encoder.device)
        t = time.perf_counter()
        pending = [encoder.launch(batch) for _ in range(2 * repeats)]  # queued back to back, as the pipeline does
        for wait in pending:
            wait()
        sync(encoder.device)
        seconds = time.perf_counter() - t
    return 2 * repeats * batch_size / seconds, mem


def run(root: Path, encoder: str = "vit_h", device: str = "cuda", images: int = 512,
        batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), compile: bool = False,
        encoder_kwargs: dict[str, Any] | None = None, image_hw: tuple[int, int] = SA1B_HW,
        decode_threads: int | None = None) -> dict[str, Any]:
    """The whole GPU benchmark; returns its measures (see the module docstring)."""
    kwargs = dict(encoder_kwargs or {})
    ckpt = random_checkpoint(root, encoder, kwargs)
    t = time.perf_counter()
    teacher = load_teacher(encoder, str(ckpt), encoder_kwargs=kwargs)
    load_s = time.perf_counter() - t
    tars = root / f"sa1b-{image_hw[0]}x{image_hw[1]}-{images}"
    if not tars.exists():
        write_sa1b_tar(tars / "sa_000000.tar", list(range(1, images + 1)), np.random.default_rng(0),
                       sizes=[image_hw] * images, distinct=min(images, 16))
    source = SA1BSource(str(tars))
    stride = teacher.preprocess.img_size // feature_shape(teacher)[1]
    prepared = [prepare(source, i, "identity", teacher.preprocess, stride) for i in range(min(images, 8))]
    result: dict[str, Any] = {"encoder": encoder, "device": device, "images": images, "image_hw": image_hw,
                              "input": teacher.preprocess.img_size, "checkpoint_load_s": load_s, "compile": compile,
                              "fidelity": fidelity(teacher, prepared[:4], device)}
    fast = Encoder(teacher, device, "bfloat16", compile=compile, attention="sdpa")
    sweep = []
    for bs in batch_sizes:
        try:
            rate, mem = bare(fast, prepared, bs)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        sweep.append({"batch_size": bs, "images_s": rate, "peak_bytes": mem[0] if mem else None})
    best = max(sweep, key=lambda r: r["images_s"])
    result["bare"], result["best"] = sweep, best
    threads = decode_threads or max(1, (os.cpu_count() or 2) - 2)
    shard = best["batch_size"] * max(1, 32 // best["batch_size"])
    params = CacheParams(encoder, str(tars), str(root / f"pipeline-{encoder}.zarr"), "bench", checkpoint=str(ckpt),
                         encoder_kwargs=kwargs, dtype="float16", shard_samples=shard, batch_size=best["batch_size"],
                         autocast="bfloat16", attention="sdpa", compile=compile)
    execution = CacheExecution(device, decode_threads=threads, prefetch=8)
    seconds = []
    for attempt in range(2):  # the first run warms up (allocator, cuDNN, compilation); the second is measured
        store = open_run(replace(params, run=f"bench{attempt}"), teacher, source, device)
        with peak_memory(torch.device(device)) as mem:
            t = time.perf_counter()
            write_shards(store, teacher, source, params, execution, range(store.nshards), device)
            seconds.append(time.perf_counter() - t)
    rate = images / seconds[-1]
    result["pipeline"] = {"images_s": rate, "efficiency": rate / best["images_s"],
                          "peak_bytes": mem[0] if mem else None, "decode_threads": threads, "shard_samples": shard}
    return result


def machine() -> str:
    """The machine, in words: GPU, CPU, cores, torch and CUDA versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    gpu = (f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), "
           f"CUDA {torch.version.cuda}, " if torch.cuda.is_available() else "no GPU, ")
    return f"{gpu}{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The measures as (what, result) table rows."""
    gib = 2.0**30

    def mem(b: int | None) -> str:
        return "n/a (CPU)" if b is None else f"{b / gib:.1f} GiB"

    enc, best, pipe = result["encoder"], result["best"], result["pipeline"]
    h, w = result["image_hw"]
    out = [("machine", machine()),
           (f"{enc} teacher", f"random weights in the official checkpoint format, loaded through --checkpoint "
                              f"({result['checkpoint_load_s']:.1f} s with its sha256), input {result['input']}"
                              + (", torch.compile" if result["compile"] else ""))]
    for name, f in result["fidelity"].items():
        out.append((f"max abs diff to the fp32 reference, {name}",
                    f"{f['max_abs']:.3g} (features up to {f['ref_max_abs']:.3g}; cosine min {f['cosine_min']:.6f})"))
    out.append(("bare encoder, bf16 + sdpa, per batch size",
                "; ".join(f"{r['batch_size']}: {r['images_s']:.1f} img/s, {mem(r['peak_bytes'])}"
                          for r in result["bare"])))
    out.append(("bare encoder, best", f"{best['images_s']:.1f} img/s at batch {best['batch_size']}"))
    out.append(("full pipeline", f"{pipe['images_s']:.1f} img/s over {result['images']} SA-1B-format JPEGs {h}x{w} "
                                 f"({pipe['decode_threads']} decode threads, float16 store, shards of "
                                 f"{pipe['shard_samples']}), peak GPU memory {mem(pipe['peak_bytes'])}"))
    out.append(("pipeline efficiency", f"{pipe['efficiency']:.3f} of the bare encoder"))
    return out


def write_results(path: Path, table: list[tuple[str, str]], command: str) -> None:
    """``benchmarks/RESULTS.md``: the table, the machine and the command that produced it."""
    lines = ["# Teacher cache on a GPU", "", f"`{command}`, {time.strftime('%Y-%m-%d')}", "",
             "| measure | result |", "|---|---|"] + [f"| {k} | {v} |" for k, v in table]
    path.write_text("\n".join(lines) + "\n")
