"""The cache step of ``medprep demo``: a tiny RANDOM-WEIGHT SAM-architecture teacher over the built demo shards."""

from __future__ import annotations

from pathlib import Path

from .cache import cache_corpus
from .params import CacheExecution, per_source
from .sources import SourceSpec

ENCODER = "random-sam"


def cache_demo(shards: str | Path, out: str | Path, size: int = 256) -> str:
    """Cache every built dataset under ``shards`` into ``out`` (one run per dataset, ``random-sam-<dataset>``);
    return a summary.

    No checkpoint can be shipped, so the teacher has random weights: the features only exercise the plumbing.
    """
    lines = [f"teacher cache: RANDOM-WEIGHT tiny SAM-architecture encoder ({ENCODER}, input {size}); "
             f"its features are meaningless: use --encoder vit_h --checkpoint ... for real ones"]
    datasets = sorted(p.parent for p in Path(shards).glob("*/manifest.json"))
    params = per_source(ENCODER, [SourceSpec(str(ds), "medical") for ds in datasets], out,
                        encoder_kwargs={"img_size": size}, dtype="int8", shard_samples=8, batch_size=8)
    for result in cache_corpus(params, execution=CacheExecution("cpu")):
        lines.append(f"  {out}/{result.store.run}: {result.store.n} samples, features "
                     f"{tuple(result.store.attrs['feature_shape'])} int8")
    lines.append(f"check a run with 'medprep check-teacher {out} --run random-sam-<dataset>'; train on all of them "
                 f"with 'python examples/train_student.py --shards {shards}/* --teacher {out}'")
    return "\n".join(lines)
