"""``check-teacher``: recompute random samples of a store and compare them with what it holds.

The reference is the teacher on its own preprocessing of the source image's valid pixels
(:func:`~medprep.distill.preprocess.teacher_input`), not the cache's own path. For teachers with a prompt decoder
(SAM ``vit_*``, ``medsam``, ``litemedsam``) and sources with masks (built datasets), the masks the decoder draws
from a whole-object box prompt are compared too: from stored vs recomputed features, and each to the ground truth.

A store is data: the teacher comes from a built-in name (:data:`~medprep.distill.teachers.BUILTIN`) or from the
caller's own ``encoder`` argument, never from an importable name found in the store's attrs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from medprep.manifests.features import FeatureReader
from medprep.manifests.pixels import recorded_box
from medprep.manifests.runattrs import require

from .pipeline import Encoder, intra_op_threads, load_sample
from .preprocess import Preprocess, teacher_input, valid_pixels
from .sources import SourceSpec, open_source
from .teachers import BUILTIN, Teacher, load_teacher


@dataclass
class SampleCheck:
    """One checked sample and view: the embedding error of its stored features against the teacher's own
    preprocessing, and, for a teacher with a prompt decoder and a sample with a mask, the Dice of the masks its
    decoder draws from a whole-object box prompt (``box``, in the teacher's input frame): stored vs recomputed
    features, and each to the ground truth."""

    key: str
    view: str
    max_abs: float
    cosine: float
    dice: float | None = None
    dice_stored_gt: float | None = None
    dice_live_gt: float | None = None
    box: list[float] | None = None

#: the run attributes check-teacher recomputes from (every run medprep writes records them)
RECOMPUTE_ATTRS = ("encoder", "encoder_kwargs", "checkpoint", "checkpoint_sha256", "preprocess", "autocast", "source")


@dataclass
class CheckReport:
    """Errors of stored features against recomputed ones, over the checked samples and views, and every finished
    sample whose stored data is damaged (``damaged``: checksum mismatch, missing chunk, NaN/Inf); ``samples``: per
    sample and view, with the mask Dice where the teacher has a prompt decoder."""

    run: str
    keys: list[str]
    max_abs: float
    mean_abs: float
    cosine_min: float
    cosine_mean: float
    damaged: list[str] = field(default_factory=list)
    samples: list[SampleCheck] = field(default_factory=list)

    def _dice(self, name: str) -> list[float]:
        return [getattr(c, name) for c in self.samples if getattr(c, name) is not None]

    @property
    def dice_min(self) -> float | None:
        """The lowest Dice between masks decoded from stored and from recomputed features (None: no masks)."""
        d = self._dice("dice")
        return min(d) if d else None

    def ok(self, min_cosine: float, min_dice: float | None = None) -> bool:
        """No damage, finite errors, every checked sample at least ``min_cosine`` similar (NaN fails) and, with
        ``min_dice``, every decoded mask pair at least that Dice."""
        dice_ok = min_dice is None or self.dice_min is None or self.dice_min >= min_dice
        return (not self.damaged and bool(np.isfinite(self.max_abs)) and self.cosine_min >= min_cosine
                and dice_ok)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-able data: the run's figures (``dice_*`` means and minimum over the decoded masks)
        and each sample's."""
        out = {k: v for k, v in asdict(self).items() if k != "samples"}
        for name in ("dice", "dice_stored_gt", "dice_live_gt"):
            d = self._dice(name)
            out[f"{name}_mean"] = float(np.mean(d)) if d else None
            out[f"{name}_min"] = min(d) if d else None
        out["samples"] = [asdict(c) for c in self.samples]
        return out

    def summary(self) -> str:
        lines = [f"{self.run}: {len(self.keys)} samples checked: max |err| {self.max_abs:.3g}, "
                 f"mean |err| {self.mean_abs:.3g}, cosine min {self.cosine_min:.6f} mean {self.cosine_mean:.6f}"]
        j = self.to_json()
        if j["dice_mean"] is not None:
            lines.append(f"masks from whole-object box prompts ({len(self._dice('dice'))}): Dice stored vs "
                         f"recomputed min {j['dice_min']:.4f} mean {j['dice_mean']:.4f}; to the ground truth: stored "
                         f"{j['dice_stored_gt_mean']:.4f}, recomputed {j['dice_live_gt_mean']:.4f} (mean)")
        if self.damaged:
            lines.append(f"{len(self.damaged)} finished samples are damaged (restore the store from a copy, or "
                         f"delete the run and rerun 'medprep cache-teacher'):")
            lines += [f"  {d}" for d in self.damaged]
        return "\n".join(lines)


def trusted_encoder(recorded: str, given: str | None, where: str) -> str:
    """The encoder to recompute a store with: a built-in name, or the ``module:callable`` the caller passed.

    Refuses a recorded ``module:callable`` (code) unless ``given`` is the same string, and a ``given`` name that
    differs from the recorded one.
    """
    if given is not None and given != recorded:
        raise ValueError(f"{where} was cached with --encoder {recorded!r}, not {given!r}: pass --encoder {recorded} "
                         f"(or omit it for a built-in teacher)")
    if recorded in BUILTIN:
        return recorded
    if given is None:
        raise ValueError(
            f"{where} names the teacher {recorded!r}, which is code, not a built-in teacher ({', '.join(BUILTIN)}); "
            f"medprep never imports code because a store names it. If you trust that code, pass "
            f"--encoder {recorded} (encoder=... in Python) to recompute with it")
    return given


def check_teacher(store: str, run: str | None = None, samples: int = 8, *, seed: int = 0, device: str = "cpu",
                  checkpoint: str | None = None, source: str | None = None, encoder: str | None = None) -> CheckReport:
    """Recompute ``samples`` random finished samples of ``store``/``run`` with the recorded teacher and source.

    First every finished sample is read (chunk checksums, missing chunks, NaN/Inf): damaged ones are listed in the
    report's ``damaged`` and not recomputed.

    ``checkpoint``/``source`` replace the recorded locations when the files have moved; the checkpoint's
    sha256 must still match the recorded one. ``encoder``: needed (and must equal the recorded name) when the
    store was cached with a ``module:callable`` teacher: see :func:`trusted_encoder`.
    """
    fs = FeatureReader.open(store, run)
    require(fs.attrs, RECOMPUTE_ATTRS, f"{store}/{fs.run}", "to recompute its features")
    a = fs.attrs
    name = trusted_encoder(a["encoder"], encoder, f"{store}/{fs.run}")
    if checkpoint is None and not (name == "litemedsam" and not os.path.exists(a["checkpoint"])):
        checkpoint = a["checkpoint"]  # litemedsam: the bundled one, where the recorded file is gone (sha256 checked)
    teacher = load_teacher(name, checkpoint, encoder_kwargs=a["encoder_kwargs"])
    teacher.preprocess = Preprocess(**a["preprocess"])
    if teacher.checkpoint_sha256 != a["checkpoint_sha256"]:
        raise ValueError(f"checkpoint {teacher.checkpoint} has sha256 {teacher.checkpoint_sha256}, the store was "
                         f"cached with {a['checkpoint_sha256']}: pass the checkpoint used for caching")
    spec = SourceSpec.from_attrs(a["source"], source)
    src = open_source(spec)
    keys = fs.keys()
    if src.keys != keys:
        raise ValueError(f"source {spec.url} does not hold the keys the store was cached from "
                         f"({len(src.keys)} keys vs {len(keys)}); pass --source with the original data")
    ledger = fs.done()
    if not ledger.any():
        raise ValueError(f"{store}/{fs.run} has no finished samples yet; run 'medprep cache-teacher' first")
    damaged = _damaged(fs, keys, ledger)
    done = np.setdiff1d(np.flatnonzero(ledger), list(damaged))
    pick = np.sort(np.random.default_rng(seed).choice(done, size=min(samples, done.size), replace=False))
    model = Encoder(teacher, device, a["autocast"], attention=a.get("attention", "reference"))  # v1: reference
    checks = []
    with intra_op_threads(a.get("cpu_threads") if model.device.type == "cpu" else None):
        for i in pick:
            image, valid = load_sample(src, int(i))
            gt = src.load_mask(int(i)) if teacher.decoder is not None and hasattr(src, "load_mask") else None
            # LiteMedSAM's rule: the box of the original mask (recorded in meta.json) scaled to the teacher's input
            whole = (recorded_box(src.load_meta(int(i)), teacher.preprocess.img_size)
                     if gt is not None and teacher.decoder.box_rule == "truncate" else None)
            for view in fs.views:
                checks.append(_check(fs, model, teacher, keys[i], int(i), view, image, valid, gt,
                                     bool(a.get("keep_padding")), whole))
    errs = [c.sample.max_abs for c in checks]
    coss = [c.sample.cosine for c in checks]
    mean_abs = float(np.mean([c.mean_abs for c in checks])) if checks else np.nan
    return CheckReport(fs.run, [keys[i] for i in pick], float(np.max(errs or [np.nan])), mean_abs,
                       float(np.min(coss or [np.nan])), float(np.mean(coss or [np.nan])), list(damaged.values()),
                       [c.sample for c in checks])


@dataclass
class _Checked:
    sample: SampleCheck
    mean_abs: float


def _check(fs: FeatureReader, model: Encoder, teacher: Teacher, key: str, i: int, view: str, image: np.ndarray,
           valid: tuple[int, int] | None, gt: np.ndarray | None, keep_padding: bool,
           whole: np.ndarray | None = None) -> _Checked:
    """Compare sample ``i``'s stored ``view`` with the teacher on its own preprocessing (:func:`teacher_input`):
    the features as the store should hold them (0 over the padding unless ``keep_padding``), and the masks decoded
    from the stored features and from the teacher's whole output. ``whole``: the box prompt of the identity view
    in the teacher's input as its own code computes it from the original mask (mirrored for hflip); None: from
    ``gt`` (:func:`teacher_box`)."""
    flipped = view == "hflip"
    if flipped:
        image = image[:, ::-1]
    pre = teacher.preprocess
    live = model.encode(torch.from_numpy(teacher_input(pre, image, valid, flipped))[None])[0].numpy()
    # the store holds 0 outside the valid region unless --keep-padding; the live masks see the teacher's output
    ref = live if keep_padding else np.where(fs.valid_mask(i, view), live, 0)
    got = fs.read(i, view)
    err = np.abs(got - ref)
    sample = SampleCheck(key, view, float(err.max()), _cosine(got, ref))
    if gt is not None:
        m = valid_pixels(gt[:, ::-1] if flipped else gt, valid, flipped)
        if m.any():
            rh, rw, x0, scale = pre.layout(image.shape[:2], valid, flipped)
            box = (teacher_box(m, scale, teacher.decoder.box_rule, x0) if whole is None
                   else mirrored_box(whole, x0 + rw) if flipped else whole.astype(np.float32))
            truth = cv2.resize(m.astype(np.uint8), (rw, rh), interpolation=cv2.INTER_NEAREST) > 0
            stored, recomputed = (decode_mask(teacher, torch.from_numpy(f)[None], box, (rh, x0, x0 + rw))
                                  for f in (np.ascontiguousarray(got), live))
            sample.dice, sample.dice_stored_gt, sample.dice_live_gt = (dice(stored, recomputed), dice(stored, truth),
                                                                       dice(recomputed, truth))
            sample.box = box.tolist()
    return _Checked(sample, float(err.mean()))


def teacher_box(mask: np.ndarray, scale: tuple[float, float], rule: str, x0: int = 0) -> np.ndarray:
    """The whole-object box prompt of a bool mask as the teacher's inference code computes it: the inclusive
    ``(x_min, y_min, x_max, y_max)`` of the mask scaled to the teacher's input (``scale``: ``(y, x)``), truncated
    to integers for ``truncate`` (LiteMedSAM's ``resize_box_to_256``), float for ``scale`` (SAM, MedSAM); moved
    right by ``x0`` (the hflip view's first valid column)."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64) * [scale[1], scale[0], scale[1], scale[0]]
    if rule == "truncate":
        box = np.trunc(box)
    return (box + [x0, 0, x0, 0]).astype(np.float32)


def mirrored_box(box: np.ndarray, width: int) -> np.ndarray:
    """``box`` ``(x_min, y_min, x_max, y_max)`` in the horizontal mirror of a frame ``width`` pixels wide."""
    return np.array([width - 1 - box[2], box[1], width - 1 - box[0], box[3]], np.float32)


def decode_mask(teacher: Teacher, features: torch.Tensor, box: np.ndarray, region: tuple[int, int, int]) -> np.ndarray:
    """The teacher's mask of ``features`` ``(1, C, H, W)`` for a box prompt, in its input frame cropped to the
    valid ``region`` (rows, ``[x0, x1)``): low-resolution logits resized to the input size (bilinear, as SAM's
    ``postprocess_masks``), thresholded at 0 (sigmoid 0.5)."""
    s = teacher.preprocess.img_size
    dec = teacher.decoder.to("cpu")
    with torch.inference_mode():
        low = dec(features.float(), torch.from_numpy(box)[None])
        if low.shape[-2:] != (s, s):
            low = F.interpolate(low, (s, s), mode="bilinear", align_corners=False)
    rows, x0, x1 = region
    return (low[0, 0, :rows, x0:x1] > 0).numpy()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks (1 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2 * int((a & b).sum()) / total if total else 1.0


def _damaged(fs: FeatureReader, keys: list[str], done: np.ndarray) -> dict[int, str]:
    """Every finished sample whose stored features cannot be trusted (read shard by shard), by row."""
    out: dict[int, str] = {i: why for i, why in fs.region_problems() if done[i]}
    for view in fs.views:
        for s in range(fs.nshards):
            for i, why in fs.problems(fs.shard_slice(s), view):
                if done[i]:
                    out.setdefault(i, f"{keys[i]!r} ({view} view): {why}")
    return dict(sorted(out.items()))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a64 @ b64 / max(np.linalg.norm(a64) * np.linalg.norm(b64), 1e-30))

