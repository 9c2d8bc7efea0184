"""Leakage check: no pair among distinct images of one modality (the fake fundus sets, look-alike fake fundus photos,
the real DRIVE eyes); every planted copy kind (resized, JPEG re-encoded, cropped, brightened/darkened) is found
within and across datasets; the JSON report exists whenever the text names it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from medprep.cli import app
from medprep.manifests import verify
from medprep.prep import build, synthetic
from medprep.prep.leakage import DEFAULT_MIN_SCORE, REPORT, check, check_build, structure_score

SIZE = 128
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def write(path: Path, rgb: np.ndarray, quality: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(synthetic.jpeg(rgb, quality) if quality else synthetic.png(rgb))


def box_mask(path: Path, hw: tuple[int, int]) -> None:
    m = np.zeros(hw, bool)
    m[hw[0] // 4: hw[0] // 2, hw[1] // 4: hw[1] // 2] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(synthetic.png(synthetic.u8(m)))


def photo(rng: np.random.Generator, h: int = 220, w: int = 250) -> np.ndarray:
    """A fake photograph with fine structure, as real ones have (the registry's fakes are 40-80 px of noise):
    a scene, thin dark curves, small bright spots and a smooth texture."""
    img, _ = synthetic.scene(h, w, rng, blobs=2)
    out = img.astype(np.float32) + cv2.GaussianBlur(rng.normal(0, 14, (h, w)).astype(np.float32), (0, 0), 3)[..., None]
    lines = np.zeros((h, w), np.uint8)
    for _ in range(10):
        pts = np.stack([rng.integers(0, w, 5), rng.integers(0, h, 5)], axis=1).astype(np.int32)
        cv2.polylines(lines, [pts], False, 1, int(rng.integers(1, 3)))
    out[lines.astype(bool)] -= rng.uniform(25, 45)
    for _ in range(25):
        cv2.circle(out, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 4)),
                   tuple(float(v) for v in rng.uniform(30, 60, 3) + out.mean((0, 1))), -1)
    return np.clip(out, 0, 255).astype(np.uint8)


def fundus_like(rng: np.random.Generator, h: int = 240, w: int = 232) -> np.ndarray:
    """A look-alike fundus photograph: the same black field of view, vignetting, optic disc and macula in every
    image (what makes real ones alike at low resolution), a different vessel tree in each."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - h / 2) / (h * 0.46), (xx - w / 2) / (w * 0.46))
    img = np.array([200, 110, 50], np.float32) * (1.1 - 0.35 * r ** 2)[..., None]
    img += 60 * np.exp(-((yy - h * 0.5) ** 2 + (xx - w * 0.2) ** 2) / (2 * (w * 0.06) ** 2))[..., None]
    img -= 30 * np.exp(-((yy - h * 0.5) ** 2 + (xx - w * 0.55) ** 2) / (2 * (w * 0.08) ** 2))[..., None]
    tree = np.zeros((h, w), np.uint8)
    for _ in range(8):
        pts = [(int(w * 0.2), int(h * 0.5))]
        for _ in range(6):
            x, y = pts[-1]
            pts.append((x + int(rng.integers(5, 40)), y + int(rng.integers(-35, 36))))
        cv2.polylines(tree, [np.array(pts, np.int32)], False, 1, int(rng.integers(1, 3)))
    img[tree.astype(bool)] *= 0.7
    img += rng.normal(0, 3, img.shape)
    img[r > 1] = 0
    return np.clip(img, 0, 255).astype(np.uint8)


def crop(img: np.ndarray, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    """Cut the given fractions off each side and resize back."""
    h, w = img.shape[:2]
    c = img[round(h * top): h - round(h * bottom), round(w * left): w - round(w * right)]
    return cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def resize(img: np.ndarray, f: float) -> np.ndarray:
    return cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


# name -> (transform, JPEG quality or None for PNG)
COPIES = {
    "resized": (lambda x: resize(x, 0.5), None),
    "jpeg": (lambda x: x, 60),
    "crop5": (lambda x: crop(x, 0.025, 0.025, 0.025, 0.025), None),
    "crop10_corner": (lambda x: crop(x, 0.1, 0, 0.1, 0), None),
    "darker": (lambda x: brightness(x, 0.8), None),
    "brighter": (lambda x: brightness(x, 1.2), None),
    "all_at_once": (lambda x: brightness(resize(crop(x, 0.05, 0, 0, 0.05), 0.7), 1.2), 75),
}


def folder_set(root: Path, images: dict[str, tuple[np.ndarray, int | None]]) -> Path:
    """A 'folder' dataset source: imgs/<name>.png|jpg with box masks."""
    for name, (img, quality) in images.items():
        write(root / "imgs" / f"{name}.{'jpg' if quality else 'png'}", img, quality)
        box_mask(root / "masks" / f"{name}.png", img.shape[:2])
    return root


def build_folder(src: Path, out: Path, name: str, **kw) -> Path:
    return build("folder", src, out, size=kw.pop("size", SIZE), images="imgs/*", masks="masks/{stem}.png",
                 modality=kw.pop("modality", "colonoscopy"), name=name, **kw).out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A source set of fake photographs, a set holding one planted copy of each kind plus new images (built at
    another size and resize mode), and an unrelated set of the same modality."""
    tmp = tmp_path_factory.mktemp("leak")
    rng = np.random.default_rng(5)
    originals = {f"img{i}": photo(rng) for i in range(len(COPIES) + 2)}
    source = build_folder(folder_set(tmp / "src", {k: (v, None) for k, v in originals.items()}), tmp / "out",
                          "source", split_rule="test")
    planted = {name: (fn(originals[f"img{k}"]), q) for k, (name, (fn, q)) in enumerate(COPIES.items())}
    planted |= {f"new{i}": (photo(rng, 200, 230), None) for i in range(4)}
    copies = build_folder(folder_set(tmp / "planted", planted), tmp / "out", "planted", size=192, resize="longest",
                          split_rule="test")
    other = build_folder(folder_set(tmp / "other", {f"o{i}": (photo(rng), None) for i in range(6)}), tmp / "out",
                         "other", split_rule="test")
    expected = {f"planted-{name}": f"source-img{k}" for k, name in enumerate(COPIES)}
    return source, copies, other, expected


def test_every_planted_copy_kind_is_found_across_datasets(world):
    source, copies, other, expected = world
    report = check([source, copies, other])
    found = {p["b_key"]: p["a_key"] for p in report.pairs}
    assert found == expected, report.table()
    assert all(p["kind"] == "cross-dataset" and p["match"] == "near-duplicate" for p in report.pairs)
    assert min(p["score"] for p in report.pairs) > DEFAULT_MIN_SCORE + 0.15  # a margin, not a coin toss
    crop10 = next(p for p in report.pairs if p["b_key"] == "planted-crop10_corner")
    assert crop10["alignment"]["scale"] == pytest.approx([1 / 0.9] * 2, abs=0.03)  # b magnifies 90% of a
    assert crop10["alignment"]["shift"] == pytest.approx([-0.1 / 0.9] * 2, abs=0.03)
    assert report.datasets["planted"]["images"] == len(COPIES) + 4
    assert f"{len(COPIES)} near-duplicate pairs" in report.table()
    assert "source test  <->  planted test" in report.table()


def test_planted_copies_within_one_dataset_across_splits(tmp_path):
    rng = np.random.default_rng(1)
    images = {f"p{k}": (photo(rng, 180, 200), None) for k in range(len(COPIES))}
    images |= {f"{name}_copy": (fn(images[f"p{k}"][0]), q) for k, (name, (fn, q)) in enumerate(COPIES.items())}
    images["p0_again"] = images["p0"]  # an identical image inside one split is not leakage
    split_of = {name: "valid" if k < 3 else "test" for k, name in enumerate(COPIES)}
    split = {"train": [f"p{k}.png" for k in range(len(COPIES))] + ["p0_again.png"], "valid": [], "test": []}
    for name, (_, q) in COPIES.items():
        split[split_of[name]].append(f"{name}_copy.{'jpg' if q else 'png'}")
    (tmp_path / "split.json").write_text(json.dumps(split))
    out = build_folder(folder_set(tmp_path / "src", images), tmp_path / "out", "dups", modality="dermoscopy",
                       split_file=tmp_path / "split.json")
    report = check([out])
    got = {(p["a_key"], p["a_split"], p["b_key"], p["b_split"]) for p in report.pairs}
    want = {(f"dups-p{k}", "train", f"dups-{name}_copy", split_of[name]) for k, name in enumerate(COPIES)}
    want.add(("dups-p0_again", "train", "dups-resized_copy", "valid"))
    assert got == want, report.table()
    assert {p["kind"] for p in report.pairs} == {"split"}


def test_distinct_images_of_one_modality_report_nothing(world, tmp_path):
    source, copies, other, _ = world
    assert check([source, other]).clean
    assert check([copies]).clean  # its own images are distinct
    rng = np.random.default_rng(3)
    eyes = folder_set(tmp_path / "eyes", {f"eye{i}": (fundus_like(rng), None) for i in range(12)})
    built = build_folder(eyes, tmp_path / "out", "eyes", modality="fundus", split_rule="811")
    report = check([built])
    assert report.clean, report.table()
    assert report.verified > 0  # look-alikes reach the verification, which tells them apart


def fake_fundus(tmp: Path) -> list[Path]:
    """The registry's fake DRIVE, STARE, CHASE_DB1 and HRF, built."""
    return [build(name, synthetic.make(name, tmp / name), tmp / "out", size=SIZE).out
            for name in ("drive", "stare", "chase-db1", "hrf")]


def test_fake_fundus_sets_report_nothing(tmp_path):
    report = check(fake_fundus(tmp_path))
    assert report.clean, report.table()
    assert sum(d["images"] for d in report.datasets.values()) == 7 + 4 + 6 + 6


def test_identical_images_are_found_without_structure(tmp_path):
    flat = np.full((60, 70, 3), 90, np.uint8)
    src = folder_set(tmp_path / "src", {"a": (flat, None), "b": (flat.copy(), None), "c": (flat + 40, None)})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a.png"], "valid": ["c.png"], "test": ["b.png"]}))
    report = check([build_folder(src, tmp_path / "out", "flat", split_file=split)])
    assert [(p["a_key"], p["b_key"], p["match"], p["score"]) for p in report.pairs] == [
        ("flat-a", "flat-b", "identical", 1.0)]


def test_score_properties():
    rng = np.random.default_rng(2)
    a = cv2.cvtColor(photo(rng, 128, 128), cv2.COLOR_RGB2GRAY).astype(np.float32)
    b = cv2.cvtColor(photo(rng, 128, 128), cv2.COLOR_RGB2GRAY).astype(np.float32)
    assert structure_score(a, a)[0] == pytest.approx(1.0, abs=1e-4)
    assert structure_score(a, a * 0.8 + 10)[0] > 0.95  # brightness and contrast do not matter
    assert abs(structure_score(a, b)[0]) < 0.1
    with pytest.raises(ValueError, match="--min-score 2"):
        check([], min_score=2)
    with pytest.raises(ValueError, match="worker processes"):
        check([], workers=0)


# -- real files (../shared/realdata): skipped on a fresh clone without them -------------------------------------


def _real(pattern: str) -> list[Path]:
    files = sorted(REAL.glob(pattern))
    if not files:
        pytest.skip(f"no real data: {REAL / pattern} is absent (the real sample files are not shipped)")
    return files


def _rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def test_real_drive_eyes_and_fake_fundus_report_nothing(tmp_path):
    """Three real DRIVE eyes (their 32x32 thumbnails correlate 0.98, their DCT hashes are 4-6 bits apart) and the
    fake fundus sets, at the default size 1024: no pair."""
    _real("DRIVE/*/images/*.tif")
    drive = build("drive", REAL / "DRIVE", tmp_path / "real").out
    report = check([drive, *fake_fundus(tmp_path)])
    assert report.datasets[f"drive@{drive}"]["images"] == 3
    assert report.clean, report.table()


def test_real_planted_copies_are_found(tmp_path):
    """Every copy kind of the real DRIVE, Kvasir-SEG and DSB-2018 images, in a second dataset: found, and nothing
    else."""
    files = _real("DRIVE/*/images/*.tif") + _real("Kvasir-SEG/images/*.jpg") + _real("stage1_train/*/images/*.png")
    originals = {f"r{i}": _rgb(f) for i, f in enumerate(files)}
    source = build_folder(folder_set(tmp_path / "src", {k: (v, None) for k, v in originals.items()}),
                          tmp_path / "out", "real", size=512, split_rule="test")
    planted = {f"{k}_{name}": (fn(img), q) for k, img in originals.items() for name, (fn, q) in COPIES.items()}
    copies = build_folder(folder_set(tmp_path / "planted", planted), tmp_path / "out", "copies", size=256,
                          split_rule="test")
    report = check([source, copies])
    pairs = {(p["a_key"], p["b_key"]) for p in report.pairs if p["kind"] == "cross-dataset"}
    assert pairs == {(f"real-{k.split('_')[0]}", f"copies-{k}") for k in planted}, report.table(limit=200)
    assert len(report.pairs) == len(pairs)  # nor any pair between distinct images


# -- the report file and the CLI ---------------------------------------------------------------------------------


def test_report_is_written_whenever_the_text_names_it(world, tmp_path):
    source, copies, other, expected = world
    report = check([source, copies])
    assert "report:" not in report.table() and "more not shown" in report.table(limit=2)
    path = report.write(tmp_path / "r" / "leak.json")
    assert f"more in {path}" in report.table(limit=2) and f"report: {path}" in report.table()
    doc = json.loads(Path(path).read_text())
    assert {p["b_key"] for p in doc["pairs"]} == set(expected) and doc["min_score"] == DEFAULT_MIN_SCORE


def test_cli_leakage_default_report_next_to_the_dataset(world, tmp_path):
    source, copies, other, expected = world
    runner = CliRunner()
    r = runner.invoke(app, ["leakage", str(source), str(copies), "--strict"])
    assert r.exit_code == 1, r.output  # --strict: pairs found
    path = Path(source) / REPORT
    assert f"report: {path}" in r.output and "cross-dataset" in r.output
    assert {p["b_key"] for p in json.loads(path.read_text())["pairs"]} == set(expected)
    assert verify(source).ok  # leakage.json beside a build is allowed
    r = runner.invoke(app, ["leakage", str(source), str(other), "--strict", "--report", str(tmp_path / "l.json"),
                            "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "no near-duplicate pairs" in r.output and f"report: {tmp_path / 'l.json'}" in r.output
    assert json.loads((tmp_path / "l.json").read_text())["pairs"] == []
    r = runner.invoke(app, ["leakage", str(source), "--min-score", "3"])
    assert r.exit_code != 0 and "--min-score 3" in r.output


def test_build_check_against(world, tmp_path):
    source, copies, other, expected = world
    runner = CliRunner()
    src = folder_set(tmp_path / "src", {"again": (photo(np.random.default_rng(5)), None)})  # = source-img0
    r = runner.invoke(app, ["build", "--dataset", "folder", "--src", str(src), "--images", "imgs/*", "--masks",
                            "masks/{stem}.png", "--modality", "colonoscopy", "--name", "again", "--split-rule", "test",
                            "--out", str(tmp_path / "b"), "--size", "64", "--check-against", str(source),
                            "--check-against", str(other)])
    assert r.exit_code == 0, r.output
    path = tmp_path / "b" / "again" / REPORT
    report = json.loads(path.read_text())
    assert [(p["a_key"], p["b_key"]) for p in report["pairs"]] == [("again-again", "source-img0")]
    assert "1 near-duplicate pairs" in r.output and f"report: {path}" in r.output
    assert check_build(tmp_path / "b" / "again", [other]).clean  # the Python API of --check-against
