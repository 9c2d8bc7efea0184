"""Build throughput: medprep build vs a naive single-process script vs the codec floor, measured in one run.

    python benchmarks/build.py [--shape isic|dsb|volumes] [--cases N] [--size 1024]

Inputs: a fake download with the shape of a real one (written once, read by every contender):
- isic: ISIC-2018, one JPEG image (``--hw``, default 768x1024) and one mask PNG per sample;
- dsb: DSB-2018 stage1_train, one RGBA PNG per case with the real size mix (256x256 up to 1040x1388) and 10-80
  one-nucleus mask PNGs of the image's size;
- volumes: an MSD-style CT dataset, 512x512 int16 ``.nii.gz`` volumes of 60-160 slices and their label volumes
  (every slice with foreground becomes a sample).

Measurements on the same files:
- naive: the throw-away script researchers write for that shape (cv2 / nibabel read, OR the masks, resize,
  ``cv2.imwrite`` PNG), one process;
- codec floors, one core: the decoding, mask merging, resizing and encoding that shape cannot avoid, with
  medprep's PNG writer and in memory (the target's reference); the same plus reading the inputs and appending
  the outputs to a file; and with OpenCV's PNG writer (the naive script's encoder) for reference. The floors
  decode every mask whole with OpenCV, as the naive script does; medprep's band decoder unfilters only the rows
  of a mask that hold foreground, which is how its DSB build gets close to (or, in a quiet round, below) them;
- medprep build with 1 and 2 workers (dask LocalCluster for 2), wall clock including discovery and cluster start.

Every contender runs once per round (``--rounds``, default 2) and keeps its fastest round: on a shared machine a
burst of load then slows one round of one contender, not the comparison.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np

from medprep.prep import build
from medprep.prep.imaging import PNG_CODEC, encode_png

Encoder = Callable[[np.ndarray], bytes]

# DSB-2018 stage1_train: (height, width) -> number of the 670 training images of that size
DSB_SIZES = {(256, 256): 334, (256, 320): 112, (520, 696): 92, (360, 360): 91, (1024, 1024): 16, (512, 640): 13,
             (603, 1272): 6, (260, 347): 5, (1040, 1388): 1}
CT_WINDOW = (40.0, 400.0)  # level, width: medprep's default CT preset


def cv2_png(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


def _imwrite(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), arr, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"cannot write {path}")


# ------------------------------------------------------------------------------------------------------- shapes


@dataclass
class Shape:
    """A download shape: how to fake it, what the naive script does, and the work its codec floor times."""

    name: str
    dataset: str
    cases: int
    options: dict[str, Any] = field(default_factory=dict)
    # targets: medprep --workers 2 and --workers 1 at least these multiples of the naive script, and per core at
    # most ``slack`` above the codec floor (issue 10); a shape without targets prints none
    targets: dict[str, float] = field(default_factory=dict)
    writes_inst = False  # medprep writes an instance map (inst.png) for this shape: a third floor includes it

    def make(self, root: Path, n: int, args: argparse.Namespace) -> Path:
        """Write a fake download of ``n`` cases under ``root``; returns the folder to pass as --src."""
        raise NotImplementedError

    def inputs(self, src: Path) -> list[tuple[Path, ...]]:
        """The files of each case, as the naive script finds them (image first)."""
        raise NotImplementedError

    def process(self, blobs: list[bytes], size: int, encode: Encoder) -> list[bytes]:
        """Decode one case's files, merge, resize and encode its outputs (the codec floor's work)."""
        raise NotImplementedError

    def process_inst(self, blobs: list[bytes], size: int, encode: Encoder) -> list[bytes]:
        """``process`` plus the instance map medprep also writes for an instance shape (``writes_inst``)."""
        raise NotImplementedError

    def naive(self, src: Path, dst: Path, size: int) -> int:
        """The throw-away script: one case at a time, cv2 reads and ``cv2.imwrite``; returns samples written."""
        dst.mkdir(parents=True, exist_ok=True)
        n = 0
        for files in self.inputs(src):
            n += self.naive_case(files, dst, size)
        return n

    def naive_case(self, files: tuple[Path, ...], dst: Path, size: int) -> int:
        raise NotImplementedError

    def describe(self, n: int, args: argparse.Namespace) -> str:
        raise NotImplementedError


def _resize_pair(img: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    return (cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR),
            cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))


def _naive_write(dst: Path, stem: str, img: np.ndarray, mask: np.ndarray, size: int) -> int:
    """The naive script's output step: resize the pair and ``cv2.imwrite`` image and mask; one sample."""
    img, mask = _resize_pair(img, mask, size)
    cv2.imwrite(str(dst / f"{stem}.png"), img)
    cv2.imwrite(str(dst / f"{stem}_mask.png"), mask)
    return 1


class Isic(Shape):
    def make(self, root: Path, n: int, args: argparse.Namespace) -> Path:
        from medprep.prep import synthetic

        h, w = (int(x) for x in args.hw.split("x"))
        return synthetic.make("isic2018", root, n=(n, 0, 0), hw=(h, w))

    def inputs(self, src: Path) -> list[tuple[Path, ...]]:
        images = sorted((src / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))
        return [(f, src / "ISIC2018_Task1_Training_GroundTruth" / f"{f.stem}_segmentation.png") for f in images]

    def naive_case(self, files: tuple[Path, ...], dst: Path, size: int) -> int:
        img = cv2.imread(str(files[0]))
        return _naive_write(dst, files[0].stem, img, cv2.imread(str(files[1]), cv2.IMREAD_GRAYSCALE), size)

    def process(self, blobs: list[bytes], size: int, encode: Encoder) -> list[bytes]:
        img = cv2.imdecode(np.frombuffer(blobs[0], np.uint8), cv2.IMREAD_COLOR)
        mask = cv2.imdecode(np.frombuffer(blobs[1], np.uint8), cv2.IMREAD_GRAYSCALE)
        return [encode(a) for a in _resize_pair(img, mask, size)]

    def describe(self, n: int, args: argparse.Namespace) -> str:
        h, w = args.hw.split("x")
        return f"{n} fake ISIC-2018 cases: one {w}x{h} JPEG and one mask PNG each"


class Dsb(Shape):
    writes_inst = True

    def make(self, root: Path, n: int, args: argparse.Namespace) -> Path:
        rng = np.random.default_rng(args.seed)
        sizes = list(DSB_SIZES)
        weights = np.array(list(DSB_SIZES.values()), float)
        base = root / "stage1_train"
        for i in range(n):
            h, w = sizes[int(rng.choice(len(sizes), p=weights / weights.sum()))]
            sid = hashlib.sha256(f"dsb-bench-{args.seed}-{i}".encode()).hexdigest()
            grey = rng.normal(12, 4, (h, w)).clip(0, 255).astype(np.uint8)  # dark stained background
            taken = np.zeros((h, w), np.uint8)
            for j in range(int(rng.integers(10, 81))):
                nucleus = np.zeros((h, w), np.uint8)
                r = int(rng.integers(4, max(5, min(h, w) // 24)))
                centre = (int(rng.integers(r, w - r)), int(rng.integers(r, h - r)))
                axes = (r, max(2, int(r * rng.uniform(0.6, 1.0))))
                cv2.ellipse(nucleus, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
                nucleus[taken > 0] = 0  # DSB nuclei do not overlap
                taken |= nucleus
                grey[nucleus > 0] = np.uint8(rng.integers(120, 220))
                _imwrite(base / sid / "masks" / f"{hashlib.sha256(f'{sid}-{j}'.encode()).hexdigest()}.png", nucleus)
            rgba = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA)
            _imwrite(base / sid / "images" / f"{sid}.png", rgba)
        return base

    def inputs(self, src: Path) -> list[tuple[Path, ...]]:
        out = []
        for case in sorted(p for p in src.iterdir() if p.is_dir()):
            out.append((case / "images" / f"{case.name}.png", *sorted((case / "masks").glob("*.png"))))
        return out

    def naive_case(self, files: tuple[Path, ...], dst: Path, size: int) -> int:
        img = cv2.imread(str(files[0]))
        mask = np.zeros(img.shape[:2], np.uint8)
        for f in files[1:]:
            cv2.bitwise_or(mask, cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), dst=mask)
        return _naive_write(dst, files[0].stem, img, mask, size)

    def process(self, blobs: list[bytes], size: int, encode: Encoder) -> list[bytes]:
        img = cv2.imdecode(np.frombuffer(blobs[0], np.uint8), cv2.IMREAD_COLOR)
        mask = np.zeros(img.shape[:2], np.uint8)
        for b in blobs[1:]:
            cv2.bitwise_or(mask, cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE), dst=mask)
        return [encode(a) for a in _resize_pair(img, mask, size)]

    def process_inst(self, blobs: list[bytes], size: int, encode: Encoder) -> list[bytes]:
        # each nucleus painted into a uint16 map inside its box; the mask cut from the resized map
        img = cv2.imdecode(np.frombuffer(blobs[0], np.uint8), cv2.IMREAD_COLOR)
        labels = np.zeros(img.shape[:2], np.uint16)
        for n, b in enumerate(blobs[1:], start=1):
            nucleus = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE)
            x, y, w, h = cv2.boundingRect(nucleus)
            np.copyto(labels[y:y + h, x:x + w], np.uint16(n), where=nucleus[y:y + h, x:x + w] > 0)
        labels = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        return [encode(img), encode((labels > 0).view(np.uint8) * np.uint8(255)), encode(labels)]

    def describe(self, n: int, args: argparse.Namespace) -> str:
        return (f"{n} fake DSB-2018 cases: one RGBA PNG each in the real size mix (256x256 .. 1040x1388) "
                f"and 10-80 one-nucleus mask PNGs")


def _window(hu: np.ndarray) -> np.ndarray:
    level, width = CT_WINDOW
    lo = level - width / 2
    return np.clip((hu.astype(np.float32) - lo) * (255.0 / width), 0, 255).round().astype(np.uint8)


class Volumes(Shape):
    def make(self, root: Path, n: int, args: argparse.Namespace) -> Path:
        import nibabel as nib

        rng = np.random.default_rng(args.seed)
        base = root / "Task03_Bench"
        yy, xx = np.mgrid[:512, :512]
        body = ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 240.0) ** 2 <= 1
        for c in range(n):
            depth = int(rng.integers(60, 161))
            image = np.full((512, 512, depth), -1000, np.int16)
            image[body] = rng.normal(40, 25, (int(body.sum()), depth)).astype(np.int16)
            label = np.zeros((512, 512, depth), np.uint8)
            z0, z1 = sorted(int(z) for z in rng.integers(0, depth, 2))
            for z in range(z0, z1 + 1):  # an organ over part of the slices, its outline changing along z
                r = 40 + 25 * np.sin(np.pi * (z - z0) / max(1, z1 - z0))
                organ = ((yy - 230) / r) ** 2 + ((xx - 300) / (1.3 * r)) ** 2 <= 1
                label[organ, z] = 1
                image[organ, z] += 60
            affine = np.diag([0.8, 0.8, 2.5, 1.0])
            for folder, data in (("imagesTr", image), ("labelsTr", label)):
                img = nib.Nifti1Image(data, affine)
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
                (base / folder).mkdir(parents=True, exist_ok=True)
                nib.save(img, str(base / folder / f"case_{c:03d}.nii.gz"))
        return base

    def inputs(self, src: Path) -> list[tuple[Path, ...]]:
        return [(f, src / "labelsTr" / f.name) for f in sorted((src / "imagesTr").glob("*.nii.gz"))]

    def naive_case(self, files: tuple[Path, ...], dst: Path, size: int) -> int:
        import nibabel as nib

        image = np.asarray(nib.load(str(files[0])).dataobj)
        label = np.asarray(nib.load(str(files[1])).dataobj)
        n = 0
        for z in range(label.shape[2]):
            if label[:, :, z].any():
                img, mask = _resize_pair(_window(image[:, :, z]), (label[:, :, z] > 0).astype(np.uint8) * 255, size)
                cv2.imwrite(str(dst / f"{files[0].name}_{z:04d}.png"), img)
                cv2.imwrite(str(dst / f"{files[0].name}_{z:04d}_mask.png"), mask)
                n += 1
        return n

    def process(self, blobs: list[bytes], size: int, encode: Encoder) -> list[bytes]:
        import nibabel as nib

        image, label = (np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(b)).dataobj) for b in blobs)
        out = []
        for z in np.flatnonzero(label.reshape(-1, label.shape[2]).any(axis=0)):
            pair = _resize_pair(_window(image[:, :, z]), (label[:, :, z] > 0).astype(np.uint8) * 255, size)
            out += [encode(a) for a in pair]
        return out

    def describe(self, n: int, args: argparse.Namespace) -> str:
        return f"{n} fake CT volumes: 512x512 int16 .nii.gz of 60-160 slices with a label volume each"


SHAPES: dict[str, Shape] = {
    "isic": Isic("isic", "isic2018", 400, targets={"workers 2": 1.8, "slack": 0.15}),
    "dsb": Dsb("dsb", "dsb2018", 670, targets={"workers 2": 1.8, "workers 1": 1.0, "slack": 0.25}),
    "volumes": Volumes("volumes", "volumes", 8, {"modality": "ct", "name": "bench-ct"}),
}


# ------------------------------------------------------------------------------------------------- measuring


def codec_floor(shape: Shape, src: Path, size: int, encode: Encoder, sink: Path | None = None,
                inst: bool = False) -> float:
    """Seconds per output sample of the shape's unavoidable pixel work on one core.

    Without ``sink`` the inputs are read before the clock starts and the outputs stay in memory (the issue's
    definition); with ``sink`` reading the inputs and appending the encoded bytes to that file are timed too. With
    ``inst`` the work includes the instance map medprep writes (``Shape.process_inst``).
    """
    process = shape.process_inst if inst else shape.process
    cv2.setNumThreads(1)
    cases = shape.inputs(src)
    blobs = None if sink else [[f.read_bytes() for f in files] for files in cases]
    samples = 0
    with open(sink or os.devnull, "wb") as out:
        t0 = time.perf_counter()
        for k, files in enumerate(cases):
            encoded = process([f.read_bytes() for f in files] if blobs is None else blobs[k], size, encode)
            samples += 1 if inst else len(encoded) // 2
            if sink:
                out.writelines(encoded)
        return (time.perf_counter() - t0) / samples


def _table(rows: Iterable[tuple[str, float, float]], floor: float, floor_io: float) -> list[str]:
    rows = list(rows)
    lines = [f"| {'contender':28s} | samples/s | vs naive | core-ms/sample | vs codec floor | vs floor + I/O |",
             f"|{'-' * 30}|----------:|---------:|---------------:|---------------:|---------------:|"]
    for name, sps, per_core in rows:
        lines.append(f"| {name:28s} | {sps:9.1f} | {sps / rows[0][1]:7.2f}x | {per_core * 1000:14.1f} | "
                     f"{per_core / floor:13.2f}x | {per_core / floor_io:13.2f}x |")
    return lines


def _settle(work: Path) -> None:
    """Remove what earlier contenders wrote and flush the page cache's dirty pages, so that no contender pays for
    the write-back of another's output."""
    for leftover in ("naive", "sink", "medprep-1", "medprep-2"):
        target = work / leftover
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    os.sync()


# the codec floors: (name, PNG writer, whether reading the inputs and writing the outputs to a file are timed)
FLOORS = (("medprep codecs", encode_png, False), ("medprep codecs + file I/O", encode_png, True),
          ("OpenCV PNG writer (naive's)", cv2_png, False))
FLOORS_OF_TARGET = ("medprep codecs", "medprep codecs + file I/O")
INST_FLOOR = "medprep codecs + inst map"  # shapes that write one: image, mask and instance map, in memory


def _round(shape: Shape, src: Path, work: Path, args: argparse.Namespace) -> Iterable[tuple[str, float]]:
    """One round: every contender once on the same files, as (contender, seconds; per output sample for a floor);
    also ("samples", what the naive script wrote)."""
    _settle(work)
    t0 = time.perf_counter()
    n = shape.naive(src, work / "naive", args.size)
    yield "naive", time.perf_counter() - t0
    yield "samples", n
    for name, encode, io in FLOORS:
        _settle(work)
        yield name, codec_floor(shape, src, args.size, encode, work / "sink" if io else None)
    if shape.writes_inst:
        yield INST_FLOOR, codec_floor(shape, src, args.size, encode_png, inst=True)
    for workers in (1, 2):
        _settle(work)
        t0 = time.perf_counter()
        result = build(shape.dataset, src, work / f"medprep-{workers}", size=args.size,
                       shard_samples=args.shard_samples, workers=workers, **shape.options)
        yield f"workers {workers}", time.perf_counter() - t0
        counts = result.manifest.counts
        if counts["samples"] != n or counts["failures"]:
            raise SystemExit(f"medprep wrote {counts['samples']} samples and {counts['failures']} failures; "
                             f"the naive script wrote {n} samples: the contenders disagree")


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=SHAPES, default="isic")
    ap.add_argument("--cases", "--images", type=int, default=None, dest="cases",
                    help="cases (images, or volumes) in the fake download; default: the real dataset's count")
    ap.add_argument("--hw", default="768x1024", help="isic: input image height x width")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--shard-samples", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of all contenders; each keeps its fastest")
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here (default: a temp dir)")
    args = ap.parse_args()
    shape = SHAPES[args.shape]
    n_cases = args.cases or shape.cases
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medprep-bench-"))
    try:
        t0 = time.perf_counter()
        src = shape.make(work / "src", n_cases, args)
        print(f"{shape.describe(n_cases, args)} -> {args.size}x{args.size} PNG "
              f"(inputs written in {time.perf_counter() - t0:.1f} s)")
        shape.naive(src, work / "warm", args.size)  # warm the page cache for every contender
        shutil.rmtree(work / "warm")
        # every contender once per round, rounds in a row; each keeps its fastest round, so that a burst of load on
        # a shared machine slows one round of one contender, not the comparison
        best: dict[str, float] = {}
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            rounds.append(dict(_round(shape, src, work, args)))
            for name, seconds in rounds[-1].items():
                best[name] = min(seconds, best.get(name, float("inf")))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    n = int(best.pop("samples"))
    floors = {name: best[name] for name in [f[0] for f in FLOORS] + [INST_FLOOR] if name in best}
    rows = [("naive script (1 process)", n / best["naive"], best["naive"] / n)]
    rows += [(f"medprep build --workers {w}", n / best[f"workers {w}"], best[f"workers {w}"] * w / n) for w in (1, 2)]
    floor, floor_io = floors["medprep codecs"], floors["medprep codecs + file I/O"]
    print(f"{n} samples; each contender's fastest of {args.rounds} rounds. Codec floors ({shape.name}: decode, merge "
          f"masks, resize, encode image and mask; 1 core; PNG writer {PNG_CODEC}):")
    for name, sec in floors.items():
        print(f"  {name:28s} {1 / sec:7.1f} samples/s  {sec * 1000:6.1f} ms/sample")
    print()
    print("\n".join(_table(rows, floor, floor_io)))
    verdicts = []
    for name, sps, _ in rows[1:]:
        label = name.removeprefix("medprep build --")
        want = shape.targets.get(label)
        if want is not None:
            verdicts.append(f"{label} >= {want}x naive: {sps / rows[0][1]:.2f}x {_verdict(sps / rows[0][1] >= want)}")
    # per core against the floors of the same round (the machine's speed drifts between rounds): the median round
    print("\nper round, medprep --workers 1 core-ms/sample against that round's floors:")
    overs: dict[str, list[float]] = {name: [] for name in floors}
    for k, r in enumerate(rounds, start=1):
        per_core = r["workers 1"] / n
        shown = []
        for name in floors:
            overs[name].append(per_core / r[name] - 1)
            shown.append(f"{name} {r[name] * 1000:.1f} ms ({overs[name][-1]:+.1%})")
        print(f"  round {k}: medprep {per_core * 1000:.1f} ms; " + "; ".join(shown))
    slack = shape.targets.get("slack")
    if slack is not None:
        over, over_io = (float(np.median(overs[name])) for name in FLOORS_OF_TARGET)
        verdicts.append(f"per core <= {slack:.0%} above the codec floor (median round): {over:+.1%} "
                        f"{_verdict(over <= slack)} (with file I/O in the floor: {over_io:+.1%} "
                        f"{_verdict(over_io <= slack)})")
        if INST_FLOOR in floors:
            over_inst = float(np.median(overs[INST_FLOOR]))
            verdicts.append(f"above the floor that also writes the instance map: {over_inst:+.1%} "
                            f"{_verdict(over_inst <= slack)}")
    if verdicts:
        print("\ntargets: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
