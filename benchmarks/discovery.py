"""Discovery time: listing a download and finding its samples, for trees of 10^4 .. 10^6 files.

    python benchmarks/discovery.py [--sizes 1e4,1e5,1e6] [--layouts dsb,flat]

Each tree is made of EMPTY files (discovery reads names, never bytes) in a temporary folder under /tmp that is
deleted afterwards:
- dsb: the DSB-2018 layout, ``stage1_train/<id>/images/<id>.png`` and 43 ``<id>/masks/<hash>.png`` per case;
- flat: the Kvasir-SEG layout, two flat folders ``Kvasir-SEG/images/<id>.jpg`` and ``Kvasir-SEG/masks/<id>.jpg``.

The time is that of the real converter discovery, the tree listing included (``SourceTree`` + ``discover``), on
one core. Targets (issue 10): 10^6 files in under 20 s, and t(10^6) no more than 12x t(10^5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from medprep.prep import SourceTree, get_converter
from medprep.prep.tree import paused_gc
from medprep.prep.unclaimed import unclaimed

MASKS_PER_CASE = 43  # DSB-2018 stage1_train: 29,461 nuclei in 670 cases


def _touch_all(paths: list[str]) -> None:
    for p in paths:
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644))


def make_dsb(root: Path, files: int) -> tuple[Path, int]:
    """About ``files`` empty files in the DSB-2018 layout; returns (the folder to pass as --src, cases)."""
    base = root / "stage1_train"
    cases = max(1, files // (MASKS_PER_CASE + 1))
    for c in range(cases):
        sid = f"{c:064x}"
        (base / sid / "images").mkdir(parents=True)
        (base / sid / "masks").mkdir()
        _touch_all([f"{base}/{sid}/images/{sid}.png"]
                   + [f"{base}/{sid}/masks/{(c * 131 + m) * 2654435761 % (1 << 64):016x}.png"
                      for m in range(MASKS_PER_CASE)])
    return base, cases


def make_flat(root: Path, files: int) -> tuple[Path, int]:
    """About ``files`` empty files in the Kvasir-SEG layout (half images, half masks)."""
    base = root / "Kvasir-SEG"
    cases = max(1, files // 2)
    for folder in ("images", "masks"):
        (base / folder).mkdir(parents=True)
        _touch_all([f"{base}/{folder}/cju{i:09d}.jpg" for i in range(cases)])
    return base, cases


LAYOUTS = {"dsb": ("dsb2018", make_dsb), "flat": ("kvasir-seg", make_flat)}


def discover(dataset: str, src: Path) -> tuple[float, float, int]:
    """(seconds listing the tree, seconds in total, records found) of one discovery from a fresh tree."""
    conv = get_converter(dataset)
    with paused_gc():  # as the build's planning runs a discovery
        t0 = time.perf_counter()
        tree = SourceTree(src)
        _ = tree.files
        listed = time.perf_counter() - t0
        records, failures = conv.discover(tree)
        failures += unclaimed(conv, tree, records, failures)  # every other file is accounted for, as in plan()
        total = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"{dataset}: {len(failures)} failures in a generated tree, e.g. {failures[0]}")
    return listed, total, len(records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated file counts (1e5 or 100000)")
    ap.add_argument("--layouts", default="dsb,flat", help=f"comma-separated, of {', '.join(LAYOUTS)}")
    ap.add_argument("--repeat", type=int, default=2, help="discoveries per tree (the fastest is shown)")
    args = ap.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    layouts = args.layouts.split(",")
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown:
        raise SystemExit(f"--layouts {','.join(unknown)}: expected some of {', '.join(LAYOUTS)}")
    rows = []
    for layout in layouts:
        dataset, make = LAYOUTS[layout]
        for size in sizes:
            work = Path(tempfile.mkdtemp(prefix="medprep-discovery-", dir="/tmp"))
            try:
                t0 = time.perf_counter()
                src, cases = make(work, size)
                os.sync()  # the new tree's metadata written back now, not while discovery is timed
                made = time.perf_counter() - t0
                files = sum(len(f) for _, _, f in os.walk(src))
                listed, total, found = min((discover(dataset, src) for _ in range(args.repeat)), key=lambda r: r[1])
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if found != cases:
                raise SystemExit(f"{layout} {size}: discovered {found} records, the tree holds {cases} cases")
            rows.append((layout, dataset, files, found, listed, total))
            print(f"  {layout} {files} files: tree written in {made:.1f} s, discovered in {total:.2f} s", flush=True)
    print("\n| layout | converter  |     files |  records | listing s | discovery s | files/s   | vs 10x fewer |")
    print("|--------|------------|----------:|---------:|----------:|------------:|----------:|-------------:|")
    previous: dict[str, tuple[int, float]] = {}
    verdicts = []
    for layout, dataset, files, found, listed, total in rows:
        before = previous.get(layout)
        ratio = total / before[1] if before and round(files / before[0]) == 10 else None
        print(f"| {layout:6s} | {dataset:10s} | {files:9d} | {found:8d} | {listed:9.2f} | {total:11.2f} | "
              f"{files / total:9.0f} | {'' if ratio is None else f'{ratio:11.1f}x'} |")
        previous[layout] = (files, total)
        if files >= 900_000:
            verdicts.append(f"{layout} 10^6 files in {total:.1f} s (< 20 s: {'OK' if total < 20 else 'MISSED'})")
            if ratio is not None:
                verdicts.append(f"{layout} t(10^6)/t(10^5) = {ratio:.1f} (<= 12: {'OK' if ratio <= 12 else 'MISSED'})")
    if verdicts:
        print("\ntargets: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
