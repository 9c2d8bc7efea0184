"""Leakage check: planted near-duplicates (resized, JPEG re-encoded) are found across datasets and splits; distinct
images give no pair."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from medprep.cli import app
from medprep.prep import build, synthetic
from medprep.prep.leakage import check, phash, thumbnail

SIZE = 64


def write(path: Path, rgb: np.ndarray, quality: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(synthetic.jpeg(rgb, quality) if quality else synthetic.png(rgb))


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def box_mask(path: Path, hw: tuple[int, int]) -> None:
    m = np.zeros(hw, bool)
    m[hw[0] // 4: hw[0] // 2, hw[1] // 4: hw[1] // 2] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(synthetic.png(synthetic.u8(m)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A source set (Kvasir-SEG), a set with three planted copies of it, and an unrelated set."""
    tmp = tmp_path_factory.mktemp("leak")
    kvasir = synthetic.make("kvasir-seg", tmp / "kvasir", n=8)
    build("kvasir-seg", kvasir, tmp / "out", size=SIZE)
    originals = sorted((kvasir / "images").glob("*.jpg"))
    planted = tmp / "planted"
    copies = {
        "copy_resized": cv2.resize(read_rgb(originals[0]), None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
        "copy_jpeg": read_rgb(originals[1]),
        "copy_resized_jpeg": cv2.resize(read_rgb(originals[2]), None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA),
    }
    for name, img in copies.items():
        write(planted / "imgs" / f"{name}.{'png' if name == 'copy_resized' else 'jpg'}", img,
              None if name == "copy_resized" else 60)
        box_mask(planted / "masks" / f"{name}.png", img.shape[:2])
    rng = np.random.default_rng(7)
    for i in range(5):
        img, _ = synthetic.scene(58, 66, rng, blobs=2)
        write(planted / "imgs" / f"new_{i}.png", img)
        box_mask(planted / "masks" / f"new_{i}.png", img.shape[:2])
    # built at another size and resize mode: the check compares the valid (unpadded) regions
    build("folder", planted, tmp / "out", size=128, resize="longest", images="imgs/*",
          masks="masks/{stem}.png", modality="colonoscopy", name="planted")
    other = synthetic.make("cvc-colondb", tmp / "colondb", n=6, seed=3)
    build("cvc-colondb", other, tmp / "out", size=SIZE)
    expected = {f"planted-{n}": f"kvasir-seg-{originals[k].stem}" for k, n in enumerate(copies)}
    return tmp / "out", expected


def test_planted_copies_are_found_across_datasets(world):
    out, expected = world
    report = check([out / "kvasir-seg", out / "planted", out / "cvc-colondb"])
    found = {p["b_key"]: p["a_key"] for p in report.pairs}
    assert found == expected
    assert all(p["kind"] == "cross-dataset" and p["a_split"] == p["b_split"] == "test" for p in report.pairs)
    assert all(p["correlation"] > 0.95 for p in report.pairs)
    assert report.datasets["planted"]["images"] == 8 and report.datasets["kvasir-seg"]["images"] == 8
    table = report.table()
    assert "3 near-duplicate pairs" in table and "kvasir-seg test  <->  planted test" in table


def test_distinct_datasets_report_nothing(world):
    out, _ = world
    report = check([out / "kvasir-seg", out / "cvc-colondb"])
    assert report.clean and report.pairs == []
    assert "no near-duplicate pairs" in report.table()
    assert check([out / "planted"]).clean  # its own images are distinct


def test_split_leakage_within_one_dataset(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    images = {}
    for name in ("a", "b", "c", "d"):
        images[name], _ = synthetic.scene(50, 60, rng, blobs=2)
        write(src / "imgs" / f"{name}.png", images[name])
    write(src / "imgs" / "a_again.jpg", images["a"], quality=70)  # the same image under another id, re-encoded
    write(src / "imgs" / "b_again.png", images["b"])  # a copy inside one split is not leakage
    for p in (src / "imgs").iterdir():
        box_mask(src / "masks" / f"{p.stem}.png", (50, 60))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a.png", "b.png", "b_again.png", "c.png"], "valid": ["d.png"],
                                 "test": ["a_again.png"]}))
    build("folder", src, tmp_path / "out", size=SIZE, images="imgs/*", masks="masks/{stem}.png",
          modality="dermoscopy", name="dups", split_file=split)
    report = check([tmp_path / "out" / "dups"])
    assert [(p["kind"], p["a_key"], p["a_split"], p["b_key"], p["b_split"]) for p in report.pairs] == [
        ("split", "dups-a", "train", "dups-a_again", "test")]


def test_hash_and_correlation_properties():
    rng = np.random.default_rng(2)
    img, _ = synthetic.scene(80, 90, rng)
    small = cv2.resize(img, (45, 40), interpolation=cv2.INTER_AREA)
    assert bin(phash(img) ^ phash(cv2.resize(small, (90, 80)))).count("1") <= 4
    assert float(thumbnail(img) @ thumbnail(img)) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= phash(img) < 1 << 64
    with pytest.raises(ValueError, match="0..63"):
        check([], threshold=64)


def test_cli_leakage_and_build_check_against(world, tmp_path):
    out, expected = world
    runner = CliRunner()
    r = runner.invoke(app, ["leakage", str(out / "kvasir-seg"), str(out / "planted"), "--report",
                            str(tmp_path / "leak.json"), "--strict"])
    assert r.exit_code == 1, r.output  # --strict: pairs found
    assert "cross-dataset" in r.output
    doc = json.loads((tmp_path / "leak.json").read_text())
    assert {p["b_key"] for p in doc["pairs"]} == set(expected)
    r = runner.invoke(app, ["leakage", str(out / "kvasir-seg"), str(out / "cvc-colondb"), "--strict"])
    assert r.exit_code == 0 and "no near-duplicate pairs" in r.output
    # build a copy of the planted set and check it against the source while building
    src = synthetic.make("kvasir-seg", tmp_path / "again", n=8)  # the same fake Kvasir (seed 0): all leak
    r = runner.invoke(app, ["build", "--dataset", "kvasir-seg", "--src", str(src), "--out", str(tmp_path / "b"),
                            "--size", "128", "--check-against", str(out / "kvasir-seg"), "--check-against",
                            str(out / "cvc-colondb")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "b" / "kvasir-seg" / "leakage.json").read_text())
    assert len(report["pairs"]) == 8 and all(p["a_dataset"] == "kvasir-seg@" + str(tmp_path / "b" / "kvasir-seg")
                                             for p in report["pairs"])
    assert "8 near-duplicate pairs" in r.output
