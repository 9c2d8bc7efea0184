"""Benchmark of ``medprep cache-teacher``, in one run:

1. pipeline efficiency on CPU = bare-encoder time / pipeline time for the same images (small random-weight
   SAM-architecture encoder at 1024 input; decoding, preprocessing and writing should hide behind the encoder);
2. bytes per sample on disk for float16 and int8 features of shape 256x64x64, for square, 4:3 and 3:2 images
   (SA-1B's shapes): through the whole pipeline with that encoder, and N(0, 1) features written by the real writer
   (the padding rows 0, as the writer stores them);
3. ``--gpu`` (a CUDA GPU): a SAM teacher of random weights in the official checkpoint format (``--encoder vit_h``),
   fidelity of bf16 + SDPA against the fp32 reference, images/s of the bare encoder per batch size and of the full
   pipeline, pipeline efficiency and GPU memory (``cache_gpu.py``); the table also goes to ``benchmarks/RESULTS.md``
   with the machine named.

    python benchmarks/cache.py [--images 24] [--out DIR]
    python benchmarks/cache.py --gpu --encoder vit_h [--compile] [--gpu-images 512]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medprep.distill import (CacheExecution, CacheParams, SA1BSource, SourceSpec, Teacher, load_teacher, open_run,
                             write_shards)
from medprep.distill.pipeline import Encoder, prepare
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


def pipeline_seconds(teacher: Teacher, source: SA1BSource, out: str, decode_threads: int, **kw) -> float:
    """Wall time of :func:`write_shards` on the CPU over a whole run, with ``teacher`` and ``source`` already loaded
    (store creation and the shape probe excluded); ``kw``: :class:`CacheParams` options."""
    params = CacheParams(teacher.name, SourceSpec(source.tars), out, "r", **kw)
    store = open_run(params, teacher, source, "cpu")
    t = time.perf_counter()
    write_shards(store, teacher, source, params, CacheExecution("cpu", decode_threads=decode_threads),
                 range(store.nshards), "cpu")
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
    decode_threads = max(1, (os.cpu_count() or 2) - torch.get_num_threads())
    rows = [("CPU", f"{os.cpu_count()} cores, torch intra-op threads {torch.get_num_threads()}, "
                    f"{decode_threads} decode thread(s); best of {repeats} alternating runs"),
            ("CPU encoder", "random-weight SAM ViT (embed 64, depth 2), 1024 input, 256x64x64 out"),
            ("CPU images", f"{n} SA-1B-format JPEGs 768x1024 in a tar, batch {batch_size}")]
    for dtype in ("float16", "int8"):
        out = root / f"cpu-{dtype}.zarr"
        bare, piped = [], []
        for _ in range(repeats):  # alternate, so load from other processes hits both alike
            bare.append(bare_seconds(encoder, prepared, batch_size))
            shutil.rmtree(out, ignore_errors=True)
            piped.append(pipeline_seconds(teacher, source, str(out), decode_threads, dtype=dtype, shard_samples=8,
                                          batch_size=batch_size))
        rows.append((f"(1) pipeline efficiency, {dtype}",
                     f"{min(bare) / min(piped):.3f}  (bare {n / min(bare):.2f} img/s, "
                     f"pipeline {n / min(piped):.2f} img/s)"))
    return rows + bytes_rows(root, teacher, batch_size, decode_threads)


#: image shape (h, w) at SA-1B's size, the rows of the 64x64 grid it fills at 1024, and the issue's targets in MiB
#: (float16, int8; square: the v1 store's size)
ASPECTS = {"square": ((1500, 1500), 64, (2.0003, 1.0008)), "4:3": ((1500, 2000), 48, (1.6, 0.80)),
           "3:2": ((1500, 2250), 43, (1.45, 0.72))}


def bytes_rows(root: Path, teacher: Teacher, batch_size: int, decode_threads: int, n: int = 4) -> list[tuple[str, str]]:
    """Bytes per sample on disk, per dtype and aspect: ``n`` images through the pipeline, and ``4 n`` N(0, 1)
    feature maps written with the padding rows zero."""
    from medprep.distill import FeatureStore

    rng = np.random.default_rng(0)
    rows = []
    for dtype, target in (("float16", 0), ("int8", 1)):
        cells = []
        for name, ((h, w), grid_rows, limits) in ASPECTS.items():
            tars = root / f"sa1b-{name.replace(':', 'x')}"
            if not tars.exists():
                write_sa1b_tar(tars / "sa_000000.tar", list(range(1, n + 1)), rng, sizes=[(h, w)] * n)
            out = root / f"bytes-{dtype}-{name.replace(':', 'x')}.zarr"
            pipeline_seconds(teacher, SA1BSource(str(tars)), str(out), decode_threads, dtype=dtype, shard_samples=n,
                             batch_size=batch_size)
            piped = disk_bytes(out / "r") / n
            syn = root / f"synthetic-{dtype}-{name.replace(':', 'x')}.zarr"
            attrs = {"dtype": dtype, "views": ["identity"], "shard_samples": n, "encoder": "N(0, 1)"}
            store = FeatureStore.create_or_open(str(syn), "r", [f"k{i}" for i in range(4 * n)], attrs,
                                                lambda: (256, 64, 64))
            for s in range(store.nshards):
                store.write_shard(s, {"identity": torch.randn(n, 256, 64, 64)}, np.full((n, 2), (grid_rows, 64)))
            synthetic = disk_bytes(syn / "r") / (4 * n)
            cells.append(f"{name} {piped / MIB:.3f} / {synthetic / MIB:.3f} (<= {limits[target]})")
        rows.append((f"(2) MiB/sample {dtype}", "pipeline / N(0,1): " + "; ".join(cells)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="images for the CPU rows")
    ap.add_argument("--repeats", type=int, default=2, help="alternating bare/pipeline runs (best is kept)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--gpu", action="store_true", help="the GPU rows instead (needs CUDA); writes RESULTS.md")
    ap.add_argument("--encoder", default="vit_h", help="--gpu: vit_h, vit_l, vit_b or medsam (random weights)")
    ap.add_argument("--compile", action="store_true", help="--gpu: torch.compile the encoder")
    ap.add_argument("--gpu-images", type=int, default=512, help="--gpu: images for the pipeline row")
    ap.add_argument("--out", help="working folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        if args.gpu:
            if not torch.cuda.is_available():
                raise SystemExit("--gpu: no CUDA GPU is visible on this machine")
            import cache_gpu

            rows = cache_gpu.rows(cache_gpu.run(root, args.encoder, "cuda", args.gpu_images, compile=args.compile))
            cache_gpu.write_results(Path(__file__).with_name("RESULTS.md"), rows,
                                    "python benchmarks/cache.py " + " ".join(sys.argv[1:]))
        else:
            rows = cpu_rows(root, args.images, args.batch_size, args.repeats)
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure':{width}s} | result |\n|{'-' * (width + 2)}|--------|")
    for k, v in rows:
        print(f"| {k:{width}s} | {v} |")


if __name__ == "__main__":
    main()
