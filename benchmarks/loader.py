"""Loader throughput: MedShards vs a bare webdataset pipeline (the floor) vs a folder loader, measured in one run.

    python benchmarks/loader.py [--samples 240] [--size 1024] [--workers 2] [--batch-size 8]

Data: fake ISIC-2018 downloads (768x1024 JPEG) built with the real pipeline into size x size shards, then exported
as plain image/mask PNG folders. Every contender yields the same batches: ``image`` float32 (3, S, S) with SAM
mean/std, ``mask`` float32 (1, S, S), ``patch32`` float32 (1, S/32, S/32), through a DataLoader with the same
workers and batch size, and is timed over whole epochs: a warm-up epoch each, then ``--repeats`` rounds that run
every contender once (interleaved, so background load hits all alike); the table gives the best and the median
epoch's samples/s (on a shared machine the best is the one measured without someone else's load) and the CPU time
(main process + workers) per sample:

- floor: ``wds.WebDataset(urls, shardshuffle=False, nodesplitter=split_by_node, workersplitter=split_by_worker,
  select_files=<the three entries>)`` with the same decode functions and nothing else;
- MedShards, in manifest order and with its default shard shuffle + shuffle buffer;
- folder: a map-style dataset reading the exported ``images/<key>.png`` and ``masks/<key>.png`` with cv2 and
  computing patch32 from the mask (a folder has no patch files).
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from medprep.loaders import MedShards, collate
from medprep.loaders.fields import decode_png, normalize_image
from medprep.manifests import open_dataset
from medprep.manifests.pixels import patch_targets
from medprep.prep import build, synthetic
from medprep.prep.export import export

ENTRIES = ("image.png", "mask.png", "patch32.npy")


def floor_sample(raw: dict) -> dict:
    """The bare pipeline's decode: exactly the work MedShards does for the three fields."""
    mask = decode_png(raw["mask.png"]) > 0
    return {"image": normalize_image(decode_png(raw["image.png"]), "sam"),
            "mask": torch.from_numpy(mask.astype(np.float32)[None]),
            "patch32": torch.from_numpy(np.load(io.BytesIO(raw["patch32.npy"])).astype(np.float32)[None])}


class FolderDataset(torch.utils.data.Dataset):
    """What a researcher writes for a folder of exported PNGs."""

    def __init__(self, root: Path):
        self.images = sorted((root / "images").glob("*.png"))
        self.masks = root / "masks"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = cv2.cvtColor(cv2.imread(str(self.images[i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(self.masks / self.images[i].name), cv2.IMREAD_GRAYSCALE) > 0
        return {"image": normalize_image(image, "sam"), "mask": torch.from_numpy(mask.astype(np.float32)[None]),
                "patch32": torch.from_numpy(patch_targets(mask, 32).astype(np.float32)[None])}


def epoch(loader: DataLoader) -> tuple[int, float, float]:
    """One full epoch: (samples, wall seconds, CPU seconds of the main process and its workers)."""
    cpu0 = time.process_time() + _children_cpu()
    t0 = time.perf_counter()
    n = sum(len(b["image"]) for b in loader)
    wall = time.perf_counter() - t0
    return n, wall, time.process_time() + _children_cpu() - cpu0


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # DataLoader workers, counted once they have exited
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--shard-samples", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs and shards here (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medprep-loader-bench-"))
    try:
        t0 = time.perf_counter()
        src = synthetic.make("isic2018", work / "src", n=(args.samples, 0, 0), hw=(768, 1024))
        shards = build("isic2018", src, work / "shards", size=args.size, shard_samples=args.shard_samples,
                       workers=2).out
        export(shards, work / "folder", "folder", splits=["train"])
        ds = open_dataset(shards)
        mb = sum(s.bytes for s in ds.manifest.shards_of("train")) / ds.manifest.nsamples("train") / 1e6
        print(f"{ds.manifest.nsamples('train')} samples {args.size}x{args.size} in "
              f"{len(ds.manifest.shards_of('train'))} shards ({mb:.2f} MB/sample), prepared in "
              f"{time.perf_counter() - t0:.0f} s; {args.workers} workers, batch {args.batch_size}\n")

        def loader(dataset: torch.utils.data.Dataset) -> DataLoader:
            return DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)

        fields = ["image", "mask", "patch32"]
        floor = wds.WebDataset(ds.shard_urls("train"), shardshuffle=False, nodesplitter=wds.split_by_node,
                               workersplitter=wds.split_by_worker, select_files=lambda f: f.endswith(ENTRIES),
                               empty_check=False).map(floor_sample)
        contenders = [
            ("bare webdataset (floor)", floor),
            ("MedShards, in order", MedShards(shards, fields=fields, shuffle=False)),
            ("MedShards, shuffled", MedShards(shards, fields=fields)),
            ("folder of PNGs", FolderDataset(work / "folder" / "train")),
        ]
        loaders = [(name, loader(dataset)) for name, dataset in contenders]
        for _, dl in loaders:
            epoch(dl)  # warm-up: page cache, imports, allocator
        runs: dict[str, list[tuple[int, float, float]]] = {name: [] for name, _ in loaders}
        for _ in range(args.repeats):  # interleaved, so that background load hits every contender alike
            for name, dl in loaders:
                runs[name].append(epoch(dl))
        rows = []
        for name, _ in loaders:
            n = runs[name][0][0]
            assert all(r[0] == n for r in runs[name]), f"{name}: epochs of different lengths"
            rates = sorted(n / r[1] for r in runs[name])
            rows.append((name, rates[-1], rates[len(rates) // 2], n, 1000 * min(r[2] for r in runs[name]) / n))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0][1]
    print(f"| {'loader':26s} | best samples/s | vs floor | median samples/s | CPU-ms/sample | samples/epoch |")
    print(f"|{'-' * 28}|---------------:|---------:|-----------------:|--------------:|--------------:|")
    for name, best, median, n, cpu in rows:
        print(f"| {name:26s} | {best:14.1f} | {best / base:7.2f}x | {median:16.1f} | {cpu:13.1f} | {n:13d} |")
    worst = min(r[1] for r in rows[1:3])
    folder = rows[3][1]
    print(f"\ntargets: MedShards within 10% of the floor: {worst / base - 1:+.1%} "
          f"{'OK' if worst >= 0.9 * base else 'MISSED'}; no slower than the folder loader: "
          f"{worst / folder:.2f}x {'OK' if worst >= folder else 'MISSED'}")

if __name__ == "__main__":
    main()
