"""Fidelity of stored teacher features, judged by the real LiteMedSAM: per dtype and padding choice, the embedding
error of the stored features against the teacher on its own preprocessing, and the Dice of the masks its decoder
draws from a whole-object box prompt (stored vs recomputed features, and to the ground truth).

    python benchmarks/teacher_fidelity.py [--real ../shared/realdata] [--out /tmp/fidelity]

Builds the real Kvasir-SEG and DRIVE files with --preset litemedsam (padded: none of them is square), caches them
with every dtype, padding zeroed (the default) and kept (--keep-padding), identity and hflip views, and prints one
markdown row per dtype and padding choice (``medprep check-teacher --json`` over every sample).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from medprep.distill import CacheExecution, CacheParams, cache_teacher
from medprep.distill.check import check_teacher
from medprep.prep import build

DTYPES = ("float32", "float16", "bfloat16", "int8")
DATASETS = {"kvasir-seg": "Kvasir-SEG", "drive": "DRIVE"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "realdata"))
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="fidelity-"))
    builds = {name: build(name, Path(args.real) / folder, work / name, preset="litemedsam").out
              for name, folder in DATASETS.items()}
    store = str(work / "t.zarr")
    print("| dtype | padding | samples x views | cosine min | cosine mean | max abs err | mask Dice stored vs "
          "recomputed: min / mean | Dice to ground truth, stored / recomputed: Kvasir-SEG | DRIVE |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype in DTYPES:
        for keep in (False, True):
            reports = []
            for name, out in builds.items():
                run = f"{name}-{dtype}-{'keep' if keep else 'zero'}"
                cache_teacher(CacheParams("litemedsam", out, store, run, dtype=dtype, keep_padding=keep,
                                          views=("identity", "hflip")), execution=CacheExecution("cpu"))
                reports.append(check_teacher(store, run, samples=1000).to_json())
            samples = [s for r in reports for s in r["samples"]]
            dice = [s["dice"] for s in samples]
            gt = " | ".join(f"{r['dice_stored_gt_mean']:.4f} / {r['dice_live_gt_mean']:.4f}" for r in reports)
            print(f"| {dtype} | {'kept' if keep else 'zeroed'} | {len(samples)} | "
                  f"{min(s['cosine'] for s in samples):.6f} | "
                  f"{sum(s['cosine'] for s in samples) / len(samples):.6f} | "
                  f"{max(s['max_abs'] for s in samples):.3g} | {min(dice):.4f} / {sum(dice) / len(dice):.4f} | "
                  f"{gt} |", flush=True)


if __name__ == "__main__":
    main()
