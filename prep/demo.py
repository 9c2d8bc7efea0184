"""``medprep demo``: fake downloads of the source-domain datasets in their official layouts, built end to end."""

from __future__ import annotations

from pathlib import Path

from .datasets import make_fake, registered
from .pipeline import build


def run_demo(out: str | Path, size: int = 256, workers: int = 1) -> str:
    """Write every fake source-domain dataset under ``out/src``, build each into ``out/shards``; return a summary."""
    out = Path(out)
    lines = [f"medprep demo: fake data in official layouts under {out / 'src'} (synthetic images, not real data)"]
    total = 0
    for name in registered("source"):
        src = make_fake(name, out / "src" / name)
        result = build(name, src, out / "shards", size=size, workers=workers, overwrite=True)
        total += result.manifest.counts["samples"]
        lines.append(result.summary())
    lines.append(f"{total} samples in {out / 'shards'}; read them with medprep.loaders or 'medprep verify DIR'")
    return "\n".join(lines)
