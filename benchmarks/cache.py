"""Benchmark of ``medprep cache-teacher``, in one run:

1. pipeline efficiency on CPU = bare-encoder time / pipeline time for the same images (small random-weight
   SAM-architecture encoder at 1024 input; decoding, preprocessing and writing should hide behind the encoder);
2. bytes per sample on disk for float16 and int8 features of shape 256x64x64;
3. with a CUDA GPU: ViT-H (random weights) at 1024, images/s of the bare encoder (bf16, best batch size) and of
   the full pipeline. Without a GPU the row says it was not measured.

    python benchmarks/cache.py [--images 24] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medprep.distill import CacheParams, SA1BSource, SourceSpec, Teacher, load_teacher, open_run, write_shards
from medprep.distill.pipeline import Encoder, prepare
from medprep.distill.preprocess import Preprocess
from medprep.distill.synthetic import write_sa1b_tar

MIB = 1 << 20


def bare_seconds(encoder: Encoder, prepared: list, batch_size: int) -> float:
    """Seconds the encoder alone takes over already decoded and preprocessed images (after one warm-up batch)."""
    batches = [prepared[b:b + batch_size] for b in range(0, len(prepared), batch_size)]
    encoder(batches[0])
    sync(encoder)
    t = time.perf_counter()
    for batch in batches:
        encoder(batch)
    sync(encoder)
    return time.perf_counter() - t


def sync(encoder: Encoder) -> None:
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()


def pipeline_seconds(teacher: Teacher, source: SA1BSource, out: str, **kw) -> float:
    """Wall time of :func:`write_shards` over a whole run, with ``teacher`` and ``source`` already loaded (store
    creation and the shape probe excluded); ``kw``: :class:`CacheParams` options."""
    params = CacheParams(teacher.name, SourceSpec(source.tars), out, "r", **kw)
    store = open_run(params, teacher, source)
    t = time.perf_counter()
    write_shards(store, teacher, source, params, range(store.nshards), params.device)
    return time.perf_counter() - t


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cpu_rows(root: Path, n: int, batch_size: int, repeats: int) -> list[tuple[str, str]]:
    tars = root / "sa1b-cpu"
    write_sa1b_tar(tars / "sa_000000.tar", list(range(1, n + 1)), np.random.default_rng(0), sizes=[(768, 1024)] * n)
    source = SA1BSource(str(tars))
    teacher = load_teacher("medprep.distill.teachers:random_sam",
                           encoder_kwargs={"img_size": 1024, "embed_dim": 64, "depth": 2, "window_size": 14})
    encoder = Encoder(teacher, "cpu")
    prepared = [prepare(source, i, "identity", teacher.preprocess, 16) for i in range(n)]
    workers = max(1, (os.cpu_count() or 2) - torch.get_num_threads())
    rows = [("CPU", f"{os.cpu_count()} cores, torch intra-op threads {torch.get_num_threads()}, "
                    f"{workers} decode thread(s); best of {repeats} alternating runs"),
            ("CPU encoder", "random-weight SAM ViT (embed 64, depth 2), 1024 input, 256x64x64 out"),
            ("CPU images", f"{n} SA-1B-format JPEGs 768x1024 in a tar, batch {batch_size}")]
    sizes = {}
    for dtype in ("float16", "int8"):
        out = root / f"cpu-{dtype}.zarr"
        bare, piped = [], []
        for _ in range(repeats):  # alternate, so load from other processes hits both alike
            bare.append(bare_seconds(encoder, prepared, batch_size))
            shutil.rmtree(out, ignore_errors=True)
            piped.append(pipeline_seconds(teacher, source, str(out), dtype=dtype, shard_size=8,
                                          batch_size=batch_size, device="cpu", workers=workers))
        rows.append((f"(1) pipeline efficiency, {dtype}",
                     f"{min(bare) / min(piped):.3f}  (bare {n / min(bare):.2f} img/s, "
                     f"pipeline {n / min(piped):.2f} img/s)"))
        sizes[dtype] = disk_bytes(out / "r") / n
    f16, i8 = sizes["float16"], sizes["int8"]
    rows.append(("(2) bytes/sample float16", f"{f16:.0f} B = {f16 / MIB:.4f} MiB ({(f16 / (2 * MIB) - 1) * 100:+.2f}% vs 2 MiB)"))
    rows.append(("(2) bytes/sample int8", f"{i8:.0f} B = {i8 / MIB:.4f} MiB (target <= 1.05 MiB)"))
    return rows


def gpu_rows(root: Path, n: int) -> list[tuple[str, str]]:
    if not torch.cuda.is_available():
        return [("(3) ViT-H on GPU", "not measured: no CUDA GPU available on this machine")]
    from segment_anything import sam_model_registry

    teacher = Teacher("vit_h (random weights)", sam_model_registry["vit_h"]().image_encoder, Preprocess())
    tars = root / "sa1b-gpu"
    write_sa1b_tar(tars / "sa_000000.tar", list(range(1, n + 1)), np.random.default_rng(0), sizes=[(1500, 2250)] * n)
    source = SA1BSource(str(tars))
    encoder = Encoder(teacher, "cuda", "bfloat16")
    prepared = [prepare(source, i % n, "identity", teacher.preprocess, 16) for i in range(64)]
    best = max(((bs, 64 / bare_seconds(encoder, prepared, bs)) for bs in (1, 2, 4, 8, 16, 32)), key=lambda r: r[1])
    piped = n / pipeline_seconds(teacher, source, str(root / "gpu.zarr"), dtype="float16", shard_size=32,
                                 batch_size=best[0], device="cuda", workers=12)
    name = torch.cuda.get_device_name()
    return [("(3) ViT-H bare encoder", f"{best[1]:.1f} img/s (bf16, batch {best[0]}, {name})"),
            ("(3) ViT-H full pipeline", f"{piped:.1f} img/s = {piped / best[1]:.1%} of bare ({n} JPEGs 1500x2250)")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="images for the CPU rows")
    ap.add_argument("--repeats", type=int, default=2, help="alternating bare/pipeline runs (best is kept)")
    ap.add_argument("--gpu-images", type=int, default=512, help="images for the GPU pipeline row")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", help="working folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        rows = cpu_rows(root, args.images, args.batch_size, args.repeats) + gpu_rows(root, args.gpu_images)
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure':{width}s} | result |\n|{'-' * (width + 2)}|--------|")
    for k, v in rows:
        print(f"| {k:{width}s} | {v} |")


if __name__ == "__main__":
    main()
