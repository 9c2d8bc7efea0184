"""Seeing the data: ``medprep info`` (dataset and teacher-store cards), ``medprep preview`` (contact sheets), the
card a build writes beside its manifest, the readers' reprs and their one default field set."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import read_built
from medprep.cli import app
from medprep.distill import CacheExecution, CacheParams, cache_teacher
from medprep.loaders import DEFAULT_FIELDS, MedShards, MedShardsIndexed
from medprep.loaders.teacher import teacher_shards
from medprep.manifests import SPLITS, BuiltDataset, sha256_file, verify
from medprep.manifests.card import CARD, ORIGIN, README, TOP_SIZES
from medprep.preview import COLOURS, preview
from medprep.prep.datasets import make_fake

CPU = CacheExecution("cpu")

runner = CliRunner()
SIZE = 64
DATASETS = ("drive", "dsb2018", "shenzhen", "busi")  # FOV; instance maps; a failure; empty masks


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, list[str], Path]]:
    """Each dataset built through the CLI: its folder, the command line and the source folder."""
    root = tmp_path_factory.mktemp("info")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in DATASETS:
            src = make_fake(name, root / "src" / name)
            args = ["build", "--dataset", name, "--src", str(src), "--out", str(root / "shards"), "--size", str(SIZE)]
            mp.setattr(sys, "argv", ["/somewhere/bin/medprep", *args])
            res = runner.invoke(app, args)
            assert res.exit_code == 0, res.output
            out[name] = (root / "shards" / name, ["medprep", *args], src)
    return out


@pytest.fixture(scope="module")
def store(built, tmp_path_factory) -> Path:
    """A tiny random-weight teacher (the demo's) cached over the DRIVE build."""
    url = tmp_path_factory.mktemp("store") / "teacher.zarr"
    cache_teacher(CacheParams("medprep.distill.teachers:random_sam", built["drive"][0], url, "drive-run",
                              encoder_kwargs={"img_size": 128}, dtype="int8", shard_samples=4, batch_size=4),
                  execution=CPU)
    return url


def info_json(path: Path) -> dict:
    res = runner.invoke(app, ["info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def rows_of(path: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (path / name).read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_card_numbers_match_manifest_and_samples(built, name):
    path, command, src = built[name]
    c = info_json(path)
    manifest = json.loads((path / "manifest.json").read_text())
    rows, failures = rows_of(path, "samples.jsonl"), rows_of(path, "failures.jsonl")
    assert c["totals"] == {"samples": len(rows), "shards": len(manifest["shards"]),
                           "bytes": sum(s["bytes"] for s in manifest["shards"]),
                           "inputs": manifest["counts"]["inputs"], "failures": len(failures)}
    for s in c["splits"]:
        shards = [x for x in manifest["shards"] if x["split"] == s["split"]]
        assert s["samples"] == manifest["counts"]["splits"][s["split"]] == sum(r["split"] == s["split"] for r in rows)
        assert (s["shards"], s["bytes"]) == (len(shards), sum(x["bytes"] for x in shards))
        assert s["modality_ids"] == {str(manifest["modality_id"]): s["samples"]}
    assert [s["split"] for s in c["splits"]] == [x for x in SPLITS if x in manifest["counts"]["splits"]]
    sizes = {tuple(r["original_hw"]) for r in rows}
    assert c["sizes"]["distinct"] == len(sizes)
    if len(sizes) <= TOP_SIZES:
        assert sum(x["samples"] for x in c["sizes"]["top"]) == len(rows)
    fg = sorted(r["foreground"] for r in rows)
    assert (c["foreground"]["min"], c["foreground"]["max"]) == (fg[0], fg[-1])
    assert c["foreground"]["median"] == pytest.approx(float(np.median(fg)), abs=1e-6)
    assert c["foreground"]["empty"] == sum(v == 0 for v in fg)
    assert c["command"] == command and Path(c["source"]).is_dir() and not set(ORIGIN) & set(manifest["params"])
    assert Path(c["source"]).resolve().is_relative_to(Path(src).resolve())  # the dataset's folder at or below --src
    assert all(Path(c["source"], f).exists() for r in rows for f in r["sha256"])  # recorded paths are relative to it
    assert c["params"] == manifest["params"] and c["generation"] == manifest["generation"]
    assert c["medprep_version"] == manifest["medprep_version"]
    # the build wrote the same card and its Markdown beside the manifest; verify accepts both files
    assert json.loads((path / CARD).read_text()) == c
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 0 and res.output.strip() == (path / README).read_text().strip()
    assert verify(path).ok


def test_card_details_per_dataset(built):
    busi = info_json(built["busi"][0])
    assert busi["foreground"]["empty"] > 0 and busi["foreground"]["min"] == 0  # normal cases: empty masks
    assert busi["instances"] is None
    shenzhen = info_json(built["shenzhen"][0])
    failures = rows_of(built["shenzhen"][0], "failures.jsonl")
    assert [(f["reason"], f["count"]) for f in shenzhen["failures"]] == [("image without mask", len(failures))]
    assert shenzhen["failures"][0]["examples"][0]["source_id"] == failures[0]["source_id"]
    # instances per sample: the count of distinct ids in each written inst.png
    path = built["dsb2018"][0]
    dsb = info_json(path)
    counts = [len(np.unique(s["inst.png"])) - (0 in s["inst.png"]) for s in read_built(path).values()]
    assert dsb["instances"]["samples"] == len(counts) and dsb["instances"]["total"] == sum(counts)
    assert (dsb["instances"]["min"], dsb["instances"]["max"]) == (min(counts), max(counts))
    text = (path / README).read_text()
    for heading in ("# dsb2018: dataset card", "## Splits", "## Source image sizes", "## Foreground fraction",
                    "## Instances per sample", "## Failures", "## Build parameters", "medprep build --dataset dsb2018"):
        assert heading in text


def test_card_of_a_build_without_card_json(built, tmp_path):
    """Builds made before cards existed: the numbers are computed, the command line and source are unknown."""
    copy = tmp_path / "shenzhen"
    shutil.copytree(built["shenzhen"][0], copy)
    (copy / CARD).unlink()
    c = info_json(copy)
    assert c["command"] is None and c["source"] is None and c["totals"]["samples"] == info_json(
        built["shenzhen"][0])["totals"]["samples"]
    assert "- built by: `(not recorded)`" in runner.invoke(app, ["info", str(copy)]).output


def test_store_card(built, store):
    c = info_json(store)
    (run,) = c["runs"]
    ds = BuiltDataset(built["drive"][0])
    n = ds.manifest.nsamples()
    assert c["kind"] == "teacher-store" and run["run"] == "drive-run" and run["finished"]
    assert run["encoder"] == "medprep.distill.teachers:random_sam" and run["checkpoint_sha256"] is None
    assert (run["dtype"], run["views"], run["samples"], run["done"]) == ("int8", ["identity"], n, n)
    assert (run["shards"], run["done_shards"]) == (-(-n // 4),) * 2
    c_, h, w = run["feature_shape"]
    assert run["bytes_per_sample"] == c_ * h * w + 2 * c_  # int8 features + float16 per-channel scale
    assert run["source_manifest_sha256"] == sha256_file(built["drive"][0] / "manifest.json")
    assert run["source"]["dataset"] == "drive"
    res = runner.invoke(app, ["info", str(store)])
    assert res.exit_code == 0 and "## drive-run" in res.output and f"{n} of {n} samples" in res.output


def test_info_and_preview_refuse_other_folders(tmp_path):
    for args in (["info", str(tmp_path)], ["preview", str(tmp_path), "--out", str(tmp_path / "x.png")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "neither a built dataset (no manifest.json) nor a teacher store" in res.output


def _panel(sheet: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(sheet.crop(box)).astype(int)


@pytest.mark.parametrize("name", ["drive", "dsb2018"])
def test_preview_of_a_dataset(built, tmp_path, name):
    path = built[name][0]
    out = tmp_path / f"{name}.png"
    res = runner.invoke(app, ["preview", str(path), "--out", str(out), "--n", "4", "--seed", "1"])
    assert res.exit_code == 0 and f"wrote {out}: 4 samples" in res.output, res.output
    result = preview(str(path), out, n=4, seed=1)  # the same sheet, with its layout
    sheet = Image.open(out).convert("RGB")
    assert sheet.size == result.size and len(result.tiles) == 4
    assert result.size[0] == 10 + 4 * (2 * 256 + 10 + 10)  # four tiles of two 256 px panels per row
    samples = read_built(path)
    colour = np.array(COLOURS["mask"])
    for t in result.tiles:
        plain, over = _panel(sheet, t.left), _panel(sheet, t.right)
        size = (t.right[2] - t.right[0], t.right[3] - t.right[1])
        mask = np.asarray(Image.fromarray(samples[t.key]["mask.png"]).resize(size, Image.Resampling.NEAREST)) > 0
        blended = np.abs(over - np.round(plain * 0.55 + colour * 0.45)).max(axis=2) <= 2
        assert mask.any() and blended[mask].mean() > 0.6  # the mask is filled in colour (outlines drawn on top)
        assert (over[~mask] == plain[~mask]).all(axis=1).mean() > 0.6  # elsewhere the image is left alone
        on = lambda c: (over == np.array(c)).all(axis=2).any()  # noqa: E731
        assert on(COLOURS["patch32 positive cells"])
        assert on(COLOURS["instance outlines"]) == (name == "dsb2018")
        assert on(COLOURS["field of view"]) == (name == "drive")
        label = _panel(sheet, t.label)
        assert label.std() > 10 and (label > 200).all(axis=2).any()  # text is drawn in the label strip
        assert t.split == samples[t.key]["meta.json"]["split"]
    header = np.asarray(sheet.crop((0, 0, sheet.width, 40))).astype(int)
    assert header.std() > 5


def test_preview_of_a_teacher_store(built, store, tmp_path):
    out = tmp_path / "store.png"
    res = runner.invoke(app, ["preview", str(store), "--out", str(out), "--n", "3"])
    assert res.exit_code == 0, res.output
    result = preview(str(store), out, n=3)
    sheet = Image.open(out).convert("RGB")
    assert sheet.size == result.size and len(result.tiles) == 3 and not result.notes
    images = {k: s["image.png"] for k, s in read_built(built["drive"][0]).items()}
    for t in result.tiles:
        assert t.run == "drive-run" and t.left is not None
        left = _panel(sheet, t.left)
        want = np.asarray(Image.fromarray(images[t.key]).resize(left.shape[1::-1], Image.Resampling.BILINEAR))
        assert np.abs(left - want).max() <= 1  # the source image beside its embedding
        emb = _panel(sheet, t.right)
        assert len(np.unique(emb.reshape(-1, 3), axis=0)) >= 4  # PCA colours, not one flat colour
    # the source dataset moved away: the embeddings alone, and a note that says why
    moved = built["drive"][0].with_name("drive-moved")
    shutil.move(built["drive"][0], moved)
    try:
        alone = preview(str(store), tmp_path / "alone.png", n=2)
    finally:
        shutil.move(moved, built["drive"][0])
    assert all(t.left is None for t in alone.tiles)
    assert len(alone.notes) == 1 and "drive-run: embeddings only" in alone.notes[0]


def test_reprs_and_one_default_field_set(built, store):
    path = built["drive"][0]
    ds = BuiltDataset(path)
    assert repr(ds).startswith(f"BuiltDataset({str(path)!r}, dataset='drive', samples={{'train': ")
    streamed, indexed = MedShards(path, "train", shuffle=False), MedShardsIndexed(path, "train")
    assert tuple(next(iter(streamed))) == tuple(indexed[0]) == DEFAULT_FIELDS
    n = ds.manifest.nsamples("train")
    for reader, kind in ((streamed, "MedShards"), (indexed, "MedShardsIndexed")):
        assert repr(reader).startswith(f"{kind}({str(path)!r}, split='train', samples={n}, ")
        assert f"fields={DEFAULT_FIELDS}" in repr(reader)
    joined = repr(teacher_shards(str(path), str(store)))
    assert joined.startswith("TeacherJoin(MedShards(") and f"TeacherFeatures({str(store)!r}, run='drive-run'" in joined
    assert "dtype='int8'" in joined
