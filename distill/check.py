"""``check-teacher``: recompute random samples of a store and compare them with what it holds.

A store is data: the teacher comes from a built-in name (:data:`~medprep.distill.teachers.BUILTIN`) or from the
caller's own ``encoder`` argument, never from an importable name found in the store's attrs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medprep.manifests.features import FeatureReader
from medprep.manifests.runattrs import require

from .pipeline import Encoder, intra_op_threads, prepare
from .preprocess import Preprocess
from .sources import SourceSpec, open_source
from .teachers import BUILTIN, load_teacher

#: the run attributes check-teacher recomputes from (every run medprep writes records them)
RECOMPUTE_ATTRS = ("encoder", "encoder_kwargs", "checkpoint", "checkpoint_sha256", "preprocess", "autocast", "source")


@dataclass
class CheckReport:
    """Errors of stored features against recomputed ones, over the checked samples and views, and every finished
    sample whose stored data is damaged (``damaged``: checksum mismatch, missing chunk, NaN/Inf)."""

    run: str
    keys: list[str]
    max_abs: float
    mean_abs: float
    cosine_min: float
    cosine_mean: float
    damaged: list[str] = field(default_factory=list)

    def ok(self, min_cosine: float) -> bool:
        """No damage, finite errors, and every checked sample at least ``min_cosine`` similar (NaN fails)."""
        return not self.damaged and bool(np.isfinite(self.max_abs)) and self.cosine_min >= min_cosine

    def summary(self) -> str:
        lines = [f"{self.run}: {len(self.keys)} samples checked: max |err| {self.max_abs:.3g}, "
                 f"mean |err| {self.mean_abs:.3g}, cosine min {self.cosine_min:.6f} mean {self.cosine_mean:.6f}"]
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
    teacher = load_teacher(name, checkpoint or a["checkpoint"], encoder_kwargs=a["encoder_kwargs"])
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
    stride = teacher.preprocess.img_size // a["feature_shape"][1]
    errs, coss = [], []
    for i in pick:
        for view in fs.views:
            with intra_op_threads(a.get("cpu_threads") if model.device.type == "cpu" else None):
                ref = model([prepare(src, int(i), view, teacher.preprocess, stride)])[0].numpy()
            if not a.get("keep_padding"):  # the store holds 0 outside the valid region
                ref = np.where(fs.valid_mask(int(i), view), ref, 0)
            got = fs.read(int(i), view)
            errs.append(np.abs(got - ref).ravel())
            coss.append(_cosine(got, ref))
    err = np.concatenate(errs) if errs else np.array([np.nan])
    return CheckReport(fs.run, [keys[i] for i in pick], float(np.max(err)), float(np.mean(err)),
                       float(np.min(coss or [np.nan])), float(np.mean(coss or [np.nan])), list(damaged.values()))


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

