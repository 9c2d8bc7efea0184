"""Time to the first batch after resuming an epoch at 90%, against a fresh start, measured in one run.

    python benchmarks/resume.py [--samples 400] [--size 512] [--workers 2] [--batch-size 8] [--at 0.9]

Data: fake ISIC-2018 downloads built with the real pipeline into ``size x size`` shards. Every contender is a
``torchdata`` ``StatefulDataLoader`` over ``MedShards`` (image, mask, patch32; default shuffle buffer and
partitions) with the same workers and batch size; the clock runs from ``iter(loader)`` (workers start) to the first
batch. Rounds run every contender once (interleaved, so background load hits all alike); the table gives the best
and the median round:

- fresh: the epoch's first batch;
- resume: a new loader given the state saved after ``--at`` of the epoch's batches (``load_state_dict``): the
  consumed part is skipped by index, the samples still in the shuffle buffers are fetched one by one;
- replay: what a loader without state does to get there (torchdata's fallback, or restarting the epoch and
  skipping): the first ``--at`` of the batches read, decoded and dropped, then the next one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from torchdata.stateful_dataloader import StatefulDataLoader

from medprep.loaders import MedShards, collate
from medprep.manifests import open_dataset
from medprep.prep import build, synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--shard-samples", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--at", type=float, default=0.9, help="where in the epoch to resume (fraction of its batches)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs and shards here (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medprep-resume-bench-"))
    try:
        src = synthetic.make("isic2018", work / "src", n=(args.samples, 0, 0), hw=(384, 512))
        shards = build("isic2018", src, work / "shards", size=args.size, shard_samples=args.shard_samples,
                       workers=2).out
        n = open_dataset(shards).manifest.nsamples("train")

        def loader() -> StatefulDataLoader:
            return StatefulDataLoader(MedShards(shards, fields=["image", "mask", "patch32"], seed=1),
                                      batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)

        whole = loader()
        batches = 0
        target = None
        for _ in whole:
            batches += 1
            if target is None and batches >= args.at * (-(-n // args.batch_size)):
                target, saved = batches, whole.state_dict()
        print(f"{n} samples {args.size}x{args.size} in {len(open_dataset(shards).manifest.shards_of('train'))} "
              f"shards, {batches} batches of {args.batch_size}, {args.workers} workers; resuming after batch "
              f"{target} ({target / batches:.0%})\n")

        def fresh() -> Any:
            return next(iter(loader()))

        def resume() -> Any:
            restored = loader()
            restored.load_state_dict(saved)
            return next(iter(restored))

        def replay() -> Any:
            it = iter(loader())
            for _ in range(target):
                next(it)
            return next(it)

        contenders: dict[str, Callable[[], Any]] = {"fresh start": fresh, "resume (state_dict)": resume,
                                                    "replay (no state)": replay}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeats):
            for name, first_batch in contenders.items():
                t0 = time.perf_counter()
                first_batch()
                times[name].append(time.perf_counter() - t0)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    base = min(times["fresh start"])
    print(f"| {'first batch after':22s} | best s | median s | vs fresh start |")
    print(f"|{'-' * 24}|-------:|---------:|---------------:|")
    for name, t in times.items():
        print(f"| {name:22s} | {min(t):6.2f} | {statistics.median(t):8.2f} | {min(t) / base:13.2f}x |")


if __name__ == "__main__":
    main()
