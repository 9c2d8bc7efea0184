"""Build throughput: medprep build vs a naive single-process script vs the codec floor, measured in one run.

    python benchmarks/build.py [--images 400] [--hw 768x1024] [--size 1024]

Inputs: fake ISIC-2018 downloads (JPEG images, PNG masks) of the given size. Three measurements on the same files:
- naive: the throw-away script researchers write (cv2.imread, cv2.resize, cv2.imwrite PNG), one process;
- codec floors, one core: decode + resize + encode of image and mask with medprep's codecs, in memory (the
  target's reference); the same plus reading the inputs and appending the outputs to a file; and with OpenCV's
  PNG writer (the naive script's encoder) for reference;
- medprep build with 1 and 2 workers (dask LocalCluster for 2), wall clock including cluster start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from medprep.prep import build, synthetic
from medprep.prep.imaging import PNG_CODEC, encode_png


def naive(src: Path, dst: Path, size: int) -> int:
    """The throw-away script: read, resize, write PNG, one file at a time."""
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for img_path in sorted((src / "ISIC2018_Task1-2_Training_Input").glob("*.jpg")):
        mask_path = src / "ISIC2018_Task1_Training_GroundTruth" / f"{img_path.stem}_segmentation.png"
        img = cv2.imread(str(img_path))
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(dst / f"{img_path.stem}.png"), cv2.resize(img, (size, size)))
        cv2.imwrite(str(dst / f"{img_path.stem}_mask.png"),
                    cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))
        n += 1
    return n


def cv2_png(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


def codec_floor(src: Path, size: int, encode: Callable[[np.ndarray], bytes], sink: Path | None = None) -> float:
    """Seconds per image of decode + resize + encode (image and mask) on one core.

    Without ``sink`` the inputs are read before the clock starts and the outputs stay in memory (the issue's
    definition); with ``sink`` reading the inputs and appending the encoded bytes to that file are timed too.
    """
    cv2.setNumThreads(1)
    files = sorted((src / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))
    pairs = [(f, src / "ISIC2018_Task1_Training_GroundTruth" / f"{f.stem}_segmentation.png") for f in files]
    blobs = None if sink else [(i.read_bytes(), m.read_bytes()) for i, m in pairs]
    with open(sink or os.devnull, "wb") as out:
        t0 = time.perf_counter()
        for k, (img_path, mask_path) in enumerate(pairs):
            img_b, mask_b = (img_path.read_bytes(), mask_path.read_bytes()) if blobs is None else blobs[k]
            img = cv2.imdecode(np.frombuffer(img_b, np.uint8), cv2.IMREAD_COLOR)
            mask = cv2.imdecode(np.frombuffer(mask_b, np.uint8), cv2.IMREAD_GRAYSCALE)
            encoded = (encode(cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)),
                       encode(cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)))
            if sink:
                out.writelines(encoded)
        return (time.perf_counter() - t0) / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--hw", default="768x1024", help="input image height x width")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--shard-samples", type=int, default=25)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    h, w = (int(x) for x in args.hw.split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medprep-bench-"))
    try:
        t0 = time.perf_counter()
        src = synthetic.make("isic2018", work / "src", n=(args.images, 0, 0), hw=(h, w))
        print(f"{args.images} fake ISIC images {w}x{h} JPEG -> {args.size}x{args.size} PNG "
              f"(inputs written in {time.perf_counter() - t0:.1f} s)")
        naive(src, work / "warm", args.size)  # warm the page cache for every contender
        shutil.rmtree(work / "warm")

        t0 = time.perf_counter()
        n = naive(src, work / "naive", args.size)
        t_naive = time.perf_counter() - t0
        floors = {"medprep codecs": codec_floor(src, args.size, encode_png),
                  "medprep codecs + file I/O": codec_floor(src, args.size, encode_png, work / "sink"),
                  "OpenCV PNG writer (naive's)": codec_floor(src, args.size, cv2_png)}
        rows = [("naive script (1 process)", n / t_naive, t_naive / n)]
        for workers in (1, 2):
            out = work / f"medprep-{workers}"
            t0 = time.perf_counter()
            result = build("isic2018", work / "src", out, size=args.size, shard_samples=args.shard_samples,
                           workers=workers)
            wall = time.perf_counter() - t0
            assert result.manifest.counts["samples"] == n
            rows.append((f"medprep build --workers {workers}", n / wall, wall * workers / n))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    floor, floor_io = floors["medprep codecs"], floors["medprep codecs + file I/O"]
    print(f"codec floors (decode + resize + encode of image and mask, 1 core; PNG writer {PNG_CODEC}):")
    for name, sec in floors.items():
        print(f"  {name:28s} {1 / sec:6.1f} images/s  {sec * 1000:6.1f} ms/image")
    print(f"\n| {'contender':28s} | images/s | vs naive | core-ms/image | vs codec floor | vs floor + I/O |")
    print(f"|{'-' * 30}|---------:|---------:|--------------:|---------------:|---------------:|")
    for name, ips, per_core in rows:
        print(f"| {name:28s} | {ips:8.1f} | {ips / rows[0][1]:7.2f}x | {per_core * 1000:13.1f} | "
              f"{per_core / floor:13.2f}x | {per_core / floor_io:13.2f}x |")
    ratio = rows[2][1] / rows[0][1]
    over, over_io = rows[1][2] / floor - 1, rows[1][2] / floor_io - 1
    print(f"\ntargets: 2 workers >= 1.8x naive: {ratio:.2f}x {'OK' if ratio >= 1.8 else 'MISSED'}; "
          f"per core <= 15% above the codec floor: {over:+.1%} {'OK' if over <= 0.15 else 'MISSED'} "
          f"(with file I/O in the floor: {over_io:+.1%} {'OK' if over_io <= 0.15 else 'MISSED'})")


if __name__ == "__main__":
    main()
