"""Distil a small student image encoder from cached teacher features (MSE against stored features, padding masked).

Self-contained example of the distillation loss (``examples/train_student.py`` did not exist when it was written):

    medprep demo --out demo/        # fake datasets + a cache from a RANDOM-WEIGHT teacher (plumbing only)
    python examples/distill_student.py --dataset demo/shards/drive --store demo/teacher.zarr --run random-sam-drive

With a real teacher: ``medprep cache-teacher --encoder vit_h --checkpoint sam_vit_h_4b8939.pth --source
shards/drive --out teacher.zarr --views identity,hflip`` and point ``--store``/``--run`` at it.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from medprep.distill.loss import masked_mse
from medprep.loaders import NORMALIZATIONS, collate
from medprep.loaders.teacher import TeacherFeatures, teacher_shards


class Student(nn.Module):
    """A tiny convolutional encoder with output stride 16, resized to the teacher's feature grid."""

    def __init__(self, out_chans: int, grid: tuple[int, int]):
        super().__init__()
        chans = [3, 32, 64, 128, 128]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.GELU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(chans[-1], out_chans, 1))
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y if tuple(y.shape[-2:]) == self.grid else F.interpolate(y, self.grid, mode="bilinear")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="built dataset folder (medprep build)")
    ap.add_argument("--store", required=True, help="teacher store (medprep cache-teacher)")
    ap.add_argument("--run", default=None, help="run in the store (default: its only run)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()

    feats = TeacherFeatures(args.store, args.run)
    c, h, w = feats.store.attrs["feature_shape"]
    norm = feats.store.attrs["preprocess"]
    print(f"teacher {feats.store.attrs['encoder']} -> ({c}, {h}, {w}); views {feats.views}")
    hflip = 0.5 if "hflip" in feats.views else 0.0
    student = Student(c, (h, w))
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr)
    step = epoch = 0
    while step < args.steps:
        data = teacher_shards(args.dataset, args.store, args.run, args.split, hflip=hflip,
                              fields=("image", "key"), normalize=_normalization(norm))
        data.set_epoch(epoch)
        for batch in torch.utils.data.DataLoader(data, batch_size=args.batch_size, collate_fn=collate):
            loss = masked_mse(student(batch["image"]), batch["teacher"], batch["teacher_valid"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            print(f"epoch {epoch} step {step}: distillation loss {loss.item():.4f}")
            if step >= args.steps:
                break
        epoch += 1


def _normalization(pre: dict) -> str:
    """The loaders' normalisation name matching the teacher's recorded pixel mean/std."""
    for name, (mean, std) in NORMALIZATIONS.items():
        if list(mean) == pre["pixel_mean"] and list(std) == pre["pixel_std"]:
            return name
    raise ValueError(f"no loaders normalisation matches the teacher's mean {pre['pixel_mean']} std {pre['pixel_std']}")


if __name__ == "__main__":
    main()
