"""Distil a small image encoder from stored LiteMedSAM features, then segment with LiteMedSAM's own decoder.

    python examples/distill_encoder.py --realdata ../shared/realdata --work /tmp/distill --steps 60

What the LiteMedSAM-family papers do (a RepViT student distilled from LiteMedSAM's TinyViT with an MSE on the
image embeddings), at toy scale and on stored features:

1. the real DRIVE, DSB-2018 and Kvasir-SEG images of ``--realdata`` are built with ``--preset litemedsam`` (256 px,
   longest side, zero padding); their ``train`` split trains, their ``test`` split is held out;
2. LiteMedSAM's image encoder (``--encoder litemedsam``, the bundled checkpoint) is cached over all of them
   into one zarr store, a run per dataset;
3. :class:`Student` (a compact timm CNN, ``resnet10t``, with a neck to the teacher's (256, 64, 64)) learns the
   stored features through ``TeacherJoin`` with ``masked_mse`` on the valid cells (padding ignored);
4. the student's features go into LiteMedSAM's own prompt encoder and mask decoder with a box prompt (the ground
   truth's bounding box) on the held-out images, next to the teacher's: Dice of each against the ground truth and
   of the student's masks against the teacher's.

``benchmarks/distill.py`` trains the same student from the store and from the teacher online and compares them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from medprep.distill import CacheExecution, CacheParams, Preprocess, cache_corpus, load_teacher, masked_mse
from medprep.distill.pipeline import region_cells
from medprep.loaders import MedShards, collate
from medprep.loaders.teacher import TeacherFeatures, TeacherJoin
from medprep.prep import build

#: the teacher, as cache-teacher names it
TEACHER = "litemedsam"
IMG_SIZE = 256  # LiteMedSAM's input
#: --realdata folder -> dataset
REAL = {"drive": "DRIVE", "dsb2018": "stage1_train", "kvasir-seg": "Kvasir-SEG"}
FIELDS = ["image", "mask", "key", "meta"]
STRIDE = 4  # LiteMedSAM: 256 px -> 64 x 64 cells


class Student(nn.Module):
    """A compact timm CNN (features at 1/4 and 1/8) and a neck to LiteMedSAM's (256, 64, 64) embedding."""

    def __init__(self, backbone: str = "resnet10t", dim: int = 256):
        super().__init__()
        import timm

        self.body = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(1, 2))
        c4, c8 = self.body.feature_info.channels()
        self.neck = nn.Sequential(nn.Conv2d(c4 + c8, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f4, f8 = self.body(x)
        f8 = F.interpolate(f8, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        return self.neck(torch.cat([f4, f8], 1))


def prepare(realdata: Path, work: Path) -> tuple[list[Path], str]:
    """Build the real images (``--preset litemedsam``) and cache LiteMedSAM's features over them, once; returns the
    built dataset folders and the store's path."""
    built, store = [], str(work / "litemedsam.zarr")
    for name, folder in REAL.items():
        out = work / "shards" / name
        if not (out / "manifest.json").exists():
            out = Path(build(name, realdata / folder, work / "shards", preset="litemedsam").out)
        built.append(out)
    if not Path(store).exists():
        cache_corpus([CacheParams(encoder=TEACHER, source=str(b), out=store, run=f"litemedsam-{b.name}", batch_size=1,
                                  shard_samples=4) for b in built], execution=CacheExecution("cpu", decode_threads=1))
    return built, store


def image_encoder() -> tuple[nn.Module, Preprocess]:
    """LiteMedSAM's image encoder (the bundled checkpoint) and its preprocessing, as ``cache-teacher`` runs them."""
    teacher = load_teacher(TEACHER)
    return teacher.encoder.eval(), teacher.preprocess


def lite_medsam() -> nn.Module:
    """LiteMedSAM's prompt encoder and mask decoder (the bundled checkpoint)."""
    return load_teacher(TEACHER).decoder.eval()


def teacher_input(batch: dict, pre: Preprocess) -> torch.Tensor:
    """The teacher's (and the student's) input: the shard images through the teacher's preprocessing
    (``Preprocess.device``: min-max to [0, 1] over each image's valid pixels, 0 on the padding), exactly as the
    cache fed it."""
    images = batch["image"]  # float32 0..255 (normalize="none"), already 256 x 256
    valid = torch.tensor([meta["valid_hw"] for meta in batch["meta"]])
    return pre.device(images, valid)


def valid_of(batch: dict) -> torch.Tensor:
    """Bool (B, 64, 64): the cells over image content (the cache's ``valid_hw`` rule, from each sample's meta)."""
    out = torch.zeros(len(batch["meta"]), IMG_SIZE // STRIDE, IMG_SIZE // STRIDE, dtype=torch.bool)
    for i, meta in enumerate(batch["meta"]):
        h, w = meta["valid_hw"]
        rows, (c0, c1) = region_cells((h, 0, w), STRIDE)
        out[i, :rows, c0:c1] = True
    return out


@dataclass
class Run:
    """What one training run measured."""

    name: str
    epoch_seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # whole step: data, targets, forward, backward
    read_seconds: list[float] = field(default_factory=list)  # waiting for the batch (images and stored features)
    teacher_seconds: list[float] = field(default_factory=list)  # running the teacher (online run)
    compute_seconds: list[float] = field(default_factory=list)  # the student's forward + backward + update
    losses: list[float] = field(default_factory=list)


def train(student: Student, batches: Callable[[int], Iterable[dict]], targets: Callable[[dict], tuple],
          epochs: int, pre: Preprocess, name: str, lr: float = 3e-3) -> Run:
    """``epochs`` passes over ``batches(epoch)``; ``targets(batch)`` gives (teacher features, valid cells)."""
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    run = Run(name)
    student.train()
    for epoch in range(epochs):
        t_epoch = time.perf_counter()
        it: Iterator[dict] = iter(batches(epoch))
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            target, valid = targets(batch)
            t2 = time.perf_counter()
            loss = masked_mse(student(teacher_input(batch, pre)), target, valid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t3 = time.perf_counter()
            run.read_seconds.append(t1 - t0)
            run.teacher_seconds.append(t2 - t1)
            run.compute_seconds.append(t3 - t2)
            run.step_seconds.append(t3 - t0)
            run.losses.append(loss.item())
        run.epoch_seconds.append(time.perf_counter() - t_epoch)
    return run


def stored_batches(built: list[Path], store: str, seed: int, batch_size: int) -> Callable[[int], DataLoader]:
    """Train batches joined with their stored features (``TeacherJoin``), epoch by epoch."""
    join = TeacherJoin(MedShards(_with_split(built, "train"), "train", FIELDS, normalize="none", seed=seed),
                       TeacherFeatures(store))

    def epoch(e: int) -> DataLoader:
        join.set_epoch(e)
        return DataLoader(join, batch_size=batch_size, collate_fn=collate)

    return epoch


def online_batches(built: list[Path], seed: int, batch_size: int) -> Callable[[int], DataLoader]:
    """The same train batches without features (the teacher runs on them)."""
    shards = MedShards(_with_split(built, "train"), "train", FIELDS, normalize="none", seed=seed)

    def epoch(e: int) -> DataLoader:
        shards.set_epoch(e)
        return DataLoader(shards, batch_size=batch_size, collate_fn=collate)

    return epoch


def _with_split(built: list[Path], split: str) -> list[Path]:
    from medprep.manifests import open_dataset

    return [b for b in built if split in open_dataset(b).manifest.splits()]


@torch.no_grad()
def evaluate(encoders: dict[str, Callable[[torch.Tensor], torch.Tensor]], built: list[Path], pre: Preprocess,
             teacher_features: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, dict[str, float]]:
    """Box-prompted masks of LiteMedSAM's prompt encoder + mask decoder on the held-out (``test``) images, fed by
    each encoder: per encoder the mean Dice against the ground truth, against the teacher's masks, and the feature
    MSE against the teacher on the valid cells."""
    net = lite_medsam()
    sums: dict[str, dict[str, float]] = {n: {"dice_gt": 0.0, "dice_teacher": 0.0, "feature_mse": 0.0}
                                         for n in encoders}
    n = 0
    held_out = MedShards(_with_split(built, "test"), "test", FIELDS, normalize="none", shuffle=False)
    for batch in DataLoader(held_out, batch_size=1, collate_fn=collate):
        x, gt, valid = teacher_input(batch, pre), batch["mask"][:, 0] > 0, valid_of(batch)
        box = _box(gt[0])
        ref_feat = teacher_features(x)
        ref = _masks(net, ref_feat, box)
        for name, enc in encoders.items():
            feat = ref_feat if enc is teacher_features else enc(x)
            pred = ref if enc is teacher_features else _masks(net, feat, box)
            sums[name]["dice_gt"] += dice(pred, gt)
            sums[name]["dice_teacher"] += dice(pred, ref)
            sums[name]["feature_mse"] += float(masked_mse(feat, ref_feat, valid))
        n += 1
    return {name: {k: v / max(n, 1) for k, v in s.items()} | {"images": n} for name, s in sums.items()}


def _box(mask: torch.Tensor) -> torch.Tensor:
    """LiteMedSAM's box prompt (x_min, y_min, x_max, y_max) around a (256, 256) mask, shape (1, 1, 4)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([[[xs.min(), ys.min(), xs.max(), ys.max()]]], dtype=torch.float32)


def _masks(net: nn.Module, features: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """LiteMedSAM's mask for ``box`` from image ``features``: logits at 256 x 256 (its low-res output), > 0."""
    sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
    logits, _ = net.mask_decoder(image_embeddings=features, image_pe=net.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)
    logits = F.interpolate(logits, size=(IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)
    return logits[:, 0] > 0


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    inter, total = (a & b).sum().item(), a.sum().item() + b.sum().item()
    return 1.0 if total == 0 else 2 * inter / total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realdata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "realdata")
    ap.add_argument("--work", type=Path, default=Path("distill-work"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    built, store = prepare(args.realdata, args.work)
    teacher, pre = image_encoder()
    torch.manual_seed(args.seed)
    student = Student()

    def stored_targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["teacher"], batch["teacher_valid"]

    run = train(student, stored_batches(built, store, args.seed, args.batch_size), stored_targets, args.epochs,
                pre, "stored")
    print(f"trained {len(run.losses)} steps in {sum(run.epoch_seconds):.1f} s; feature MSE {run.losses[0]:.4f} -> "
          f"{run.losses[-1]:.4f}")
    student.eval()
    result = evaluate({"student": student, "teacher": teacher}, built, pre, teacher)
    for name, r in result.items():
        print(f"{name:8s} on {r['images']} held-out images: Dice vs ground truth {r['dice_gt']:.3f}, vs teacher masks "
              f"{r['dice_teacher']:.3f}, feature MSE {r['feature_mse']:.4f}")


if __name__ == "__main__":
    main()
