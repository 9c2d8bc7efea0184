"""Feeding a distillation student: MedShards + TeacherJoin samples/s per core vs the floor, MosaicML streaming (MDS)
and LitData, measured in one run.

    python benchmarks/feed.py [--samples 48] [--sizes 256,1024] [--rounds 5] [--student 2000]

Data: fake ISIC-2018 downloads (768x1024 JPEG) built with the real pipeline into ``size x size`` shards; a teacher
run of (256, 64, 64) features per sample (N(0, 1), float16, the default codec) written by the real store writer
for the built keys. Every contender yields the same samples, decoded the same way: ``image`` float32 (3, S, S) with
SAM mean/std, ``mask`` float32 (1, S, S), ``teacher`` float32 (256, 64, 64):

- floor: ``wds.WebDataset`` over the same tars (``select_files``: image and mask) with the same PNG decoder, and
  the features as fixed-size raw float16 records in one memory-mapped file, converted with torch; no checks;
- medprep: ``TeacherJoin(MedShards(shards, fields=["image", "mask", "key"], shuffle=False), TeacherFeatures)``
  (source identity check, key join, crc32c per chunk, missing/NaN/Inf checks); and the same with
  ``dtype="stored"`` (float16 teacher, decoded on the GPU);
- MDS: ``streaming.MDSWriter`` columns ``image``/``mask`` (the PNG bytes) and ``teacher`` (``ndarray:float16``),
  read by ``streaming.StreamingDataset(local=...)``, the same decoders;
- LitData: ``litdata.optimize`` of the same dicts (PNG bytes, float16 array), read by
  ``litdata.StreamingDataset``, the same decoders.

Each contender runs in this process, one torch thread, samples in stored order, a warm-up epoch and ``--rounds``
interleaved epochs; samples/s per core = samples / CPU seconds of the process (all its threads), median round.
The last table gives the cores one student consuming ``--student`` samples/s needs for its input alone.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import webdataset as wds
from features import one_thread

from medprep.distill import FeatureStore
from medprep.loaders import MedShards
from medprep.loaders.fields import decode_png, normalize_image
from medprep.loaders.teacher import TeacherFeatures, TeacherJoin
from medprep.manifests import open_dataset
from medprep.prep import build, synthetic

SHAPE = (256, 64, 64)


def decode(image: bytes, mask: bytes, teacher: np.ndarray) -> dict[str, torch.Tensor]:
    """The sample every contender yields: MedShards' decoders for image and mask, features to float32."""
    return {"image": normalize_image(decode_png(image), "sam"),
            "mask": torch.from_numpy((decode_png(mask) > 0).astype(np.float32)[None]),
            "teacher": torch.from_numpy(teacher).float()}


def prepare(work: Path, n: int, size: int) -> dict[str, Any]:
    """Shards, a teacher run for their keys, raw records, an MDS and a LitData copy of the same samples."""
    src = work / "src"
    if not src.exists():
        synthetic.make("isic2018", src, n=(n, 0, 0), hw=(768, 1024))
    out = work / f"shards{size}"
    build("isic2018", src, out, size=size, shard_samples=16, workers=2)
    ds = open_dataset(out / "isic2018")
    raw = [(s["__key__"], s["image.png"], s["mask.png"])
           for s in wds.WebDataset(ds.shard_urls("train"), shardshuffle=False, empty_check=False)]
    keys = [k for k, _, _ in raw]
    feats = torch.randn(len(keys), *SHAPE, generator=torch.Generator().manual_seed(size)).half()
    store = str(work / f"teacher{size}.zarr")
    attrs = {"dtype": "float16", "views": ["identity"], "shard_samples": 16, "encoder": "bench",
             "source": {"kind": "medical", "dataset": ds.name, "generation": ds.generation, "url": str(ds.root)}}
    run = FeatureStore.create_or_open(store, "r", keys, attrs, lambda: SHAPE)
    for s in range(run.nshards):
        sl = run.shard_slice(s)
        run.write_shard(s, {"identity": feats[sl].float()}, np.full((sl.stop - sl.start, 2), 64, np.int32))
    records = work / f"teacher{size}.bin"
    feats.numpy().tofile(records)
    return {"shards": out / "isic2018", "urls": ds.shard_urls("train"), "store": store, "raw": raw, "keys": keys,
            "records": records, "mds": write_mds(work / f"mds{size}", raw, feats),
            "litdata": write_litdata(work / f"litdata{size}", raw, feats)}


def write_mds(out: Path, raw: list[tuple[str, bytes, bytes]], feats: torch.Tensor) -> Path:
    from streaming import MDSWriter

    columns = {"key": "str", "image": "bytes", "mask": "bytes", "teacher": "ndarray:float16:256,64,64"}
    with MDSWriter(out=str(out), columns=columns) as w:
        for (key, image, mask), f in zip(raw, feats.numpy()):
            w.write({"key": key, "image": image, "mask": mask, "teacher": f})
    return out


def _litdata_item(item: tuple[str, bytes, bytes, np.ndarray]) -> dict[str, Any]:
    key, image, mask, teacher = item
    return {"key": key, "image": image, "mask": mask, "teacher": teacher}


def write_litdata(out: Path, raw: list[tuple[str, bytes, bytes]], feats: torch.Tensor) -> Path:
    import litdata

    litdata.optimize(fn=_litdata_item, inputs=[(k, i, m, f) for (k, i, m), f in zip(raw, feats.numpy())],
                     output_dir=str(out), chunk_bytes="64MB", num_workers=1, verbose=False)
    return out


def contenders(data: dict[str, Any], cache: Path) -> dict[str, Callable[[], Iterable[Any]]]:
    """Name -> a function making one epoch's iterable."""
    import litdata
    from streaming import StreamingDataset

    records = np.memmap(data["records"], np.float16, "r", shape=(len(data["keys"]), *SHAPE))
    row = {k: i for i, k in enumerate(data["keys"])}
    floor = wds.WebDataset(data["urls"], shardshuffle=False, empty_check=False,
                           select_files=lambda f: f.endswith(("image.png", "mask.png"))).map(
        lambda s: decode(s["image.png"], s["mask.png"], np.asarray(records[row[s["__key__"]]])))
    shards = MedShards(data["shards"], fields=["image", "mask", "key"], shuffle=False)
    features = TeacherFeatures(data["store"], "r")
    medprep = TeacherJoin(shards, features)
    stored = TeacherJoin(shards, features, dtype="stored")
    mds = StreamingDataset(local=str(data["mds"]), shuffle=False, batch_size=1)
    lit = litdata.StreamingDataset(str(data["litdata"]), cache_dir=str(cache))

    def remote(dataset: Any) -> Iterable[dict[str, torch.Tensor]]:
        return (decode(s["image"], s["mask"], s["teacher"]) for s in dataset)

    return {"floor: webdataset + raw records": lambda: floor, "medprep: MedShards + TeacherJoin": lambda: medprep,
            "medprep, teacher as stored": lambda: stored, "MosaicML streaming (MDS)": lambda: remote(mds),
            "LitData": lambda: remote(lit)}


def epoch(make: Callable[[], Iterable[Any]]) -> tuple[int, float, float]:
    """(samples, wall seconds, CPU seconds of this process and its children) of one pass."""
    cpu0 = time.process_time() + _children_cpu()
    t0 = time.perf_counter()
    n = 0
    for s in make():
        assert s["teacher"].shape == SHAPE and s["image"].dtype == torch.float32
        n += 1
    return n, time.perf_counter() - t0, time.process_time() + _children_cpu() - cpu0


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--student", type=float, default=2000.0, help="samples/s one student consumes (for the cores)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    one_thread()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medprep-feed-bench-"))
    tables = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            t0 = time.perf_counter()
            data = prepare(work, args.samples, size)
            loaders = contenders(data, work / f"litcache{size}")
            for make in loaders.values():
                epoch(make)  # warm-up: page cache, indexes, imports
            runs: dict[str, list[tuple[int, float, float]]] = {name: [] for name in loaders}
            for _ in range(args.rounds):
                for name, make in loaders.items():
                    runs[name].append(epoch(make))
            tables.append((size, time.perf_counter() - t0, runs))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.samples} samples per size; one torch thread, stored order, median of {args.rounds} interleaved "
          f"epochs; samples/s per core = samples / CPU s\n")
    print(f"| size | contender                        | samples/s per core | vs floor | wall samples/s | "
          f"cores for {args.student:g}/s |")
    print(f"|-----:|----------------------------------|-------------------:|---------:|---------------:|"
          f"---------------:|")
    for size, _, runs in tables:
        per_core = {name: float(np.median([n / cpu for n, _, cpu in r])) for name, r in runs.items()}
        wall = {name: float(np.median([n / w for n, w, _ in r])) for name, r in runs.items()}
        floor = next(iter(per_core.values()))
        for name in runs:
            print(f"| {size:4d} | {name:32s} | {per_core[name]:18.1f} | {per_core[name] / floor:7.2f}x | "
                  f"{wall[name]:14.1f} | {args.student / per_core[name]:14.1f} |")


if __name__ == "__main__":
    main()
