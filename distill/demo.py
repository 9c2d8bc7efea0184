"""The cache step of ``medprep demo``: a tiny RANDOM-WEIGHT SAM-architecture teacher over the built demo shards."""

from __future__ import annotations

from pathlib import Path

from .cache import cache_teacher
from .params import CacheParams
from .sources import SourceSpec

ENCODER = "medprep.distill.teachers:random_sam"


def cache_demo(shards: str | Path, out: str | Path, size: int = 256) -> str:
    """Cache every built dataset under ``shards`` into ``out`` (one run per dataset); return a summary.

    No checkpoint can be shipped, so the teacher has random weights: the features only exercise the plumbing.
    """
    lines = [f"teacher cache: RANDOM-WEIGHT tiny SAM-architecture encoder ({ENCODER}, input {size}); "
             f"its features are meaningless: use --encoder vit_h --checkpoint ... for real ones"]
    for ds in sorted(p.parent for p in Path(shards).glob("*/manifest.json")):
        run = f"random-sam-{ds.name}"
        result = cache_teacher(CacheParams(ENCODER, SourceSpec(str(ds), "medical"), out, run,
                                           encoder_kwargs={"img_size": size}, dtype="int8", shard_size=8,
                                           batch_size=8, device="cpu"))
        lines.append(f"  {out}/{run}: {result.store.n} samples, features {tuple(result.store.attrs['feature_shape'])} int8")
    lines.append(f"check a run with 'medprep check-teacher {out} --run random-sam-<dataset>'")
    return "\n".join(lines)
