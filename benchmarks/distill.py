"""Benchmark of distillation from a medprep store against the teacher online, in one run.

The student, data, seed and steps of ``examples/distill_encoder.py`` (LiteMedSAM's image encoder as the teacher,
real DRIVE / DSB-2018 / Kvasir-SEG images built with ``--preset litemedsam``), trained twice:

- **stored**: targets are the store's features, joined by ``TeacherJoin`` (float16 in the store, float32 out);
- **online**: the teacher encodes every batch (what training without a store does).

Prints per run the seconds per epoch, the share of a step spent reading (the batch with its stored features) and
running the teacher, the student's own forward + backward + update per step, and after training the feature MSE
and the box-prompted mask Dice (LiteMedSAM's prompt encoder + mask decoder) on the held-out images. Targets: the
stored step costs at most the student's own forward + backward + 10%, and its Dice is within 0.01 of the online
run's.

    python benchmarks/distill.py [--epochs 3] [--work DIR] [--realdata ../shared/realdata]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import distill_encoder as ex  # noqa: E402


MIB = 1 << 20
DTYPES = ("float16", "bfloat16", "int8", "float32")


@torch.no_grad()
def bytes_per_sample(built: list[Path], teacher: torch.nn.Module, pre, root: Path) -> list[str]:
    """MiB per sample on disk of LiteMedSAM's features (256 px input, 256x64x64) of every built image, written by
    the store's writer in each dtype (features computed once; padding cells stored as 0, as the cache does)."""
    from medprep.distill import FeatureStore
    from medprep.loaders import MedShards, collate
    from medprep.manifests import open_dataset

    lines = []
    for b in built:
        feats, valid, keys = [], [], []
        for split in open_dataset(b).manifest.splits():
            for batch in torch.utils.data.DataLoader(MedShards([b], split, ex.FIELDS, normalize="none",
                                                               shuffle=False), batch_size=1, collate_fn=collate):
                feats.append(teacher(ex.teacher_input(batch, pre)))
                vh, vw = batch["meta"][0]["valid_hw"]
                valid.append((-(-vh // ex.STRIDE), -(-vw // ex.STRIDE)))
                keys.append(batch["key"][0])
        cells = []
        for dtype in DTYPES:
            out = root / f"bytes-{b.name}-{dtype}.zarr"
            attrs = {"dtype": dtype, "views": ["identity"], "shard_samples": len(keys), "encoder": ex.TEACHER}
            store = FeatureStore.create_or_open(str(out), "r", keys, attrs, lambda: (256, 64, 64))
            store.write_shard(0, {"identity": torch.cat(feats)}, np.array(valid))
            size = sum(f.stat().st_size for f in (out / "r").rglob("*") if f.is_file())
            cells.append(f"{dtype} {size / len(keys) / MIB:.3f}")
        lines.append(f"{b.name} ({len(keys)} images, valid cells {sorted(set(valid))}): " + ", ".join(cells))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realdata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "realdata")
    ap.add_argument("--work", type=Path, default=None, help="keep the builds and the store here (default: a temp "
                                                            "folder)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bytes", action="store_true", help="also MiB per sample of the store per dtype")
    args = ap.parse_args()
    if not args.realdata.exists():
        sys.exit(f"no real images at {args.realdata}: pass --realdata (DRIVE, stage1_train, Kvasir-SEG folders)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        built, store = ex.prepare(args.realdata, work)
        teacher, pre = ex.image_encoder()

        def stored_targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            return batch["teacher"], batch["teacher_valid"]

        @torch.no_grad()
        def online_targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            return teacher(ex.teacher_input(batch, pre)), ex.valid_of(batch)

        runs, students = [], []
        for name, batches, targets in (
                ("stored", ex.stored_batches(built, store, args.seed, args.batch_size), stored_targets),
                ("online", ex.online_batches(built, args.seed, args.batch_size), online_targets)):
            torch.manual_seed(args.seed)
            student = ex.Student()
            runs.append(ex.train(student, batches, targets, args.epochs, pre, name))
            students.append(student.eval())
        result = ex.evaluate({r.name: s for r, s in zip(runs, students)} | {"teacher": teacher}, built, pre,
                             teacher)
        sizes = bytes_per_sample(built, teacher, pre, Path(tmp)) if args.bytes else []
    print(f"torch threads {torch.get_num_threads()}, {args.epochs} epochs of {len(runs[0].step_seconds) // args.epochs}"
          f" steps (batch {args.batch_size}), student {sum(p.numel() for p in students[0].parameters()):,} "
          f"parameters, teacher LiteMedSAM TinyViT (256 px -> 256x64x64)")
    print(f"{'run':8s} {'s/epoch':>8s} {'s/step':>7s} {'read':>6s} {'teacher':>8s} {'student f+b':>12s} "
          f"{'step/f+b':>9s} {'train MSE':>10s} {'MSE':>8s} {'Dice gt':>8s} {'Dice vs T':>9s}")
    for r in runs:
        step = statistics.median(r.step_seconds)
        fb = statistics.median(r.compute_seconds)
        share = sum(r.read_seconds) / sum(r.step_seconds)
        teach = sum(r.teacher_seconds) / sum(r.step_seconds)
        ev = result[r.name]
        print(f"{r.name:8s} {statistics.mean(r.epoch_seconds):8.2f} {step:7.3f} {share:6.1%} {teach:8.1%} "
              f"{fb:12.3f} {step / fb:9.3f} {r.losses[-1]:10.4f} {ev['feature_mse']:8.4f} {ev['dice_gt']:8.3f} "
              f"{ev['dice_teacher']:9.3f}")
    t = result["teacher"]
    print(f"{'teacher':8s} {'':>8s} {'':>7s} {'':>6s} {'':>8s} {'':>12s} {'':>9s} {'':>10s} {0:8.4f} "
          f"{t['dice_gt']:8.3f} {1:9.3f}   ({t['images']} held-out images)")
    stored, online = runs
    ratio = statistics.median(stored.step_seconds) / statistics.median(stored.compute_seconds)
    gap = abs(result["stored"]["dice_gt"] - result["online"]["dice_gt"])
    print(f"stored step / student f+b = {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'}); "
          f"|Dice stored - online| = {gap:.4f} (target <= 0.01: {'met' if gap <= 0.01 else 'NOT met'}); "
          f"online / stored seconds per epoch = "
          f"{statistics.mean(online.epoch_seconds) / statistics.mean(stored.epoch_seconds):.1f}x")

    for line in sizes:
        print(f"MiB/sample, LiteMedSAM 256 px features, real images: {line}")


if __name__ == "__main__":
    main()
