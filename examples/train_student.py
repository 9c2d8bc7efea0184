"""Train a tiny self-prompting segmentation student on medprep shards (runs on a CPU in seconds).

    python examples/train_student.py --shards shards/drive shards/dsb2018 --steps 5

The student follows the ESP-MedSAM / De-LightSAM recipe at toy scale: a conv image encoder; a patch head that
predicts which 32x32 patches hold foreground (trained on the shards' ``patch32`` with BCE) and whose output
prompts the decoder; a mask head that matches decoder features against one learned query per modality (focal +
Dice on ``mask``). The data side is three lines: ``MedShards(...)``, ``StatefulDataLoader(...)``, ``set_epoch``.

With ``--teacher STORE`` (a store written by ``medprep cache-teacher`` over the same shards, one run per dataset)
the student also distils the teacher's image embeddings: a 1x1 projection of its deep features, resized to the
teacher's grid, is pulled towards the stored features with an MSE that ignores padding cells (``teacher_valid``).
Samples are joined by key with all the store's runs (``--teacher-run`` to choose some); each dataset must have been
cached from the very build given in ``--shards`` (``--allow-source-mismatch`` overrides). Inputs are then flipped
through the ``hflip`` view where a run cached it, instead of free augmentation, so targets stay right.

    medprep demo --out demo/     # shards + a cache from a RANDOM-WEIGHT teacher (plumbing only)
    python examples/train_student.py --shards demo/shards/drive demo/shards/dsb2018 --teacher demo/teacher.zarr \
        --steps 5

With ``--checkpoint FILE`` the model, the optimiser and the loader's state (``torchdata``'s ``StatefulDataLoader``
collects it from every worker) are saved after every step, atomically; run the same command again after a crash
or a SIGKILL and training continues from the next batch the killed run would have seen, mid-epoch. ``--exact``
reads every sample once per epoch instead of resampled, modality-balanced draws.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader

from medprep.distill.loss import masked_mse
from medprep.loaders import Augment, MedShards, collate
from medprep.loaders.teacher import TeacherFeatures, TeacherJoin
from medprep.manifests.modalities import N_MODALITIES  # one query per id of the modality table

FIELDS = ["image", "mask", "patch32", "modality_id", "key"]


def block(cin: int, cout: int) -> nn.Sequential:
    """3x3 stride-2 conv, batch norm, GELU: halves the resolution."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


class TinyStudent(nn.Module):
    """Encoder to 1/32 resolution; patch head at 1/32 (the self-prompt); mask head at 1/4 with modality queries."""

    def __init__(self, dim: int = 32, n_modalities: int = N_MODALITIES,
                 teacher_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.stem = nn.Sequential(block(3, 16), block(16, dim))  # 1/4
        self.deep = nn.Sequential(block(dim, dim), block(dim, dim), block(dim, dim))  # 1/32
        self.patch_head = nn.Conv2d(dim, 1, 1)
        self.prompt = nn.Conv2d(1, dim, 1)  # embeds the predicted patch map as a dense prompt
        self.fuse = nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 1))
        self.queries = nn.Embedding(n_modalities, dim)
        # projection of the deep features to the teacher's embedding (C, H, W), when distilling
        self.teacher_shape = teacher_shape
        self.embed = nn.Conv2d(dim, teacher_shape[0], 1) if teacher_shape else None

    def forward(self, image: torch.Tensor, modality_id: torch.Tensor) -> dict[str, torch.Tensor]:
        shallow = self.stem(image)
        deep = self.deep(shallow)
        patch_logits = self.patch_head(deep)
        prompted = deep + self.prompt(torch.sigmoid(patch_logits))
        up = F.interpolate(prompted, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        feats = self.fuse(torch.cat([shallow, up], 1))
        query = self.queries(modality_id)  # (B, dim): one learned query per modality
        mask_logits = torch.einsum("bchw,bc->bhw", feats, query)[:, None] / math.sqrt(feats.shape[1])
        mask_logits = F.interpolate(mask_logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        out = {"patch32": patch_logits, "mask": mask_logits}
        if self.embed is not None:
            out["embed"] = F.interpolate(self.embed(deep), size=self.teacher_shape[1:], mode="bilinear",
                                         align_corners=False)
        return out


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.), mean over pixels."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * (1 - p_t) ** gamma * ce).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample, averaged over the batch."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def student_loss(out: dict[str, torch.Tensor], batch: dict[str, Any],
                 weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The loss terms and their weighted sum ``total``. Add terms here (e.g. feature distillation against a
    teacher): every term in the returned dict with a weight in ``weights`` enters ``total``."""
    w = {"patch_bce": 1.0, "mask_focal": 20.0, "mask_dice": 1.0, "distill": 1.0, **(weights or {})}
    terms = {
        "patch_bce": F.binary_cross_entropy_with_logits(out["patch32"], batch["patch32"]),
        "mask_focal": focal_loss(out["mask"], batch["mask"]),
        "mask_dice": dice_loss(out["mask"], batch["mask"]),
    }
    if "embed" in out:  # feature distillation: MSE against the stored teacher embedding, padding masked
        terms["distill"] = masked_mse(out["embed"], batch["teacher"], batch["teacher_valid"])
    terms["total"] = sum(w[k] * v for k, v in terms.items() if k in w)
    return terms


def train(shards: Sequence[str], steps: int = 5, batch_size: int = 4, workers: int = 0, lr: float = 1e-3,
          seed: int = 0, balance: str | None = None, teacher: str | None = None,
          teacher_run: Sequence[str] | None = None, distill_weight: float = 1.0,
          allow_source_mismatch: bool = False, exact: bool = False, checkpoint: str | None = None,
          log_keys: str | None = None) -> tuple[TinyStudent, list[dict[str, float]]]:
    """Train up to ``steps`` optimiser steps in all (continuing from ``checkpoint`` when it exists, and saving it
    after every step); returns the model and the loss terms of the steps this call ran."""
    torch.manual_seed(seed)
    features = TeacherFeatures(teacher, teacher_run or None) if teacher else None
    data: MedShards | TeacherJoin = MedShards(
        shards, split="train", fields=FIELDS, normalize="sam", augment=None if features else Augment(), seed=seed,
        resampled=not exact, epoch_samples=None if exact else steps * batch_size, balance=balance)
    if features is not None:
        hflip = 0.5 if any("hflip" in r.views for r in features.readers) else 0.0
        data = TeacherJoin(data, features, hflip=hflip, seed=seed, allow_mismatch=allow_source_mismatch)
    loader = StatefulDataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                drop_last=True)
    model = TinyStudent(teacher_shape=features.feature_shape if features else None)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    step, epoch = 0, 0
    if checkpoint and os.path.exists(checkpoint):
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        loader.load_state_dict(saved["loader"])  # the rest of the saved epoch, in the order it would have come
        step, epoch = saved["step"], saved["epoch"]
        print(f"resumed at step {step} (epoch {epoch})")
    history: list[dict[str, float]] = []
    while step < steps:
        data.set_epoch(epoch)
        for batch in loader:
            out = model(batch["image"], batch["modality_id"])
            losses = student_loss(out, batch, {"distill": distill_weight})
            opt.zero_grad()
            losses["total"].backward()
            opt.step()
            step += 1
            history.append({k: v.item() for k, v in losses.items()})
            if log_keys:  # the samples of every step, for checking what a resumed run saw
                with open(log_keys, "a") as f:
                    f.write(json.dumps({"step": step, "keys": batch["key"]}) + "\n")
            if checkpoint:
                save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                             "loader": loader.state_dict(), "step": step, "epoch": epoch})
            print(f"step {step:4d}  " + "  ".join(f"{k} {v:.4f}" for k, v in history[-1].items()), flush=True)
            if step == steps:
                break
        epoch += 1
    return model, history


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Write ``state`` to a temporary name, then rename it over ``path``: a kill leaves the old or the new file."""
    tmp = Path(f"{path}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", nargs="+", required=True, help="built dataset folders (holding manifest.json)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--balance", choices=["modality"], default=None, help="modality-balanced batches")
    ap.add_argument("--teacher", default=None, help="teacher feature store (medprep cache-teacher) to distil")
    ap.add_argument("--teacher-run", action="append", default=[],
                    help="run(s) of the store to read, repeatable or comma-separated (default: all of them)")
    ap.add_argument("--allow-source-mismatch", action="store_true",
                    help="join even when a run was cached from another build of a dataset")
    ap.add_argument("--distill-weight", type=float, default=1.0)
    ap.add_argument("--save", default=None, help="write the trained weights here")
    ap.add_argument("--exact", action="store_true", help="every sample once per epoch (default: resampled draws)")
    ap.add_argument("--checkpoint", default=None,
                    help="save model, optimiser and loader state here after every step; resume from it if it exists")
    ap.add_argument("--log-keys", default=None, help="append each step's sample keys to this JSON-lines file")
    args = ap.parse_args(argv)
    runs = [r for value in args.teacher_run for r in value.split(",") if r]
    model, history = train(args.shards, args.steps, args.batch_size, args.workers, args.lr, args.seed, args.balance,
                           args.teacher, runs, args.distill_weight, args.allow_source_mismatch, args.exact,
                           args.checkpoint, args.log_keys)
    if args.save:
        torch.save(model.state_dict(), args.save)
    return history


if __name__ == "__main__":
    main()
