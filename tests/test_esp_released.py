"""The ``esp-medsam-released`` id map: the ids the ESP-MedSAM authors' loader derives from exported file names,
checked against that rule written out here independently, on every dataset's names, the authors' split files,
and end to end through ``build --preset esp-medsam`` and ``export --layout esp-medsam``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import read_built
from medprep.cli import app
from medprep.manifests.modalities import modality_id
from medprep.prep import build
from medprep.prep.archive import open_tree
from medprep.prep.datasets import get_converter, make_fake, registered
from medprep.prep.export import export

SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "esp-medsam-splits"


def authors_loader_id(file_name: str) -> int:
    """BinaryLoader.__getitem__ of xq141839/ESP-MedSAM dataloader.py, step by step."""
    image_id = list(file_name.split("."))[0]
    modality_name = list(image_id.split("_"))[0]
    mcls = None
    if modality_name == "ISIC":
        mcls = 0
    elif modality_name == "CHNCXR":
        mcls = 1
    elif modality_name == "ultra":
        mcls = 2
    if mcls is None and len(list(image_id.split("_"))) > 1:
        mcls = 3
    if mcls is None and len(modality_name) > 10:
        mcls = 4
    if mcls is None and len(modality_name) <= 10:
        mcls = 5
    return mcls


def released(name: str) -> int:
    return modality_id("any", "esp-medsam-released", name)


@pytest.mark.parametrize("dataset", sorted(registered()))
def test_every_datasets_exported_names_get_the_authors_loader_id(dataset, tmp_path):
    cls = registered()[dataset]
    if cls.fake is None:
        pytest.skip(f"{dataset} has no fake data (the registry battery reports that)")
    conv = get_converter(dataset, **cls.fake_options)
    tree = open_tree(make_fake(dataset, tmp_path))
    records, _ = conv.discover(tree)
    assert records
    names = set()
    for rec in records:
        for sid, _ in conv.samples({f: tree.read(f) for f in rec.files()}, rec):  # slices get their own names
            names.add(conv.esp_file_id(sid))
    for name in names:
        assert released(f"{name}.png") == authors_loader_id(f"{name}.png") == released(name), name


def test_the_cases_the_issue_names():
    assert released("MCUCXR_0001_0") == 3  # Montgomery trained as 3, not x-ray's 1
    assert released("CHNCXR_0001_0") == 1 and released("ISIC_0000000") == 0 and released("ultra_000001") == 2
    assert released("22_training") == 3
    assert released("0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9") == 4
    assert released("588") == 5
    assert released("benign (1)") == 5 and released("benign (76)") == 4  # BUSI: by the name's length
    with pytest.raises(ValueError, match="file name"):
        modality_id("fundus", "esp-medsam-released")


def test_the_authors_split_file_names():
    files = sorted(SPLITS.glob("*_data_split.json"))
    if not files:
        pytest.skip(f"the authors' split files are absent ({SPLITS}); they are not shipped with medprep")
    for f in files:
        for names in json.loads(f.read_text()).values():
            for name in names:
                assert released(name) == authors_loader_id(name), (f.name, name)


def test_export_warns_about_ids_and_a_split_that_are_not_the_authors(tmp_path):
    src = make_fake("drive", tmp_path / "src")
    built = build("drive", src, tmp_path / "shards", size=64).out
    notes = "\n".join(export(built, tmp_path / "esp", "esp-medsam").notes)
    assert "7 samples carry modality ids other than the authors' loader" in notes  # fundus: 2, their loader: 3
    assert "named like the authors' file but holds medprep's own split of drive" in notes


def test_build_preset_then_export_gives_the_authors_loader_ids(tmp_path):
    """build --preset esp-medsam --split-file <the authors' json> on a fake DRIVE download, export --layout
    esp-medsam: the authors' loader rule on each exported file name gives the shard's modality.cls."""
    split_file = SPLITS / "retinal_data_split.json"
    if not split_file.exists():
        pytest.skip(f"{split_file} is absent (the authors' split files are not shipped with medprep)")
    src = make_fake("drive", tmp_path / "src")
    runner = CliRunner()
    res = runner.invoke(app, ["build", "--dataset", "drive", "--src", str(src), "--out", str(tmp_path / "shards"),
                              "--preset", "esp-medsam", "--split-file", str(split_file)])
    assert res.exit_code == 0, res.output
    built = tmp_path / "shards" / "drive"
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["params"]["preset"] == "esp-medsam" and manifest["params"]["size"] == 1024
    res = runner.invoke(app, ["export", str(built), "--out", str(tmp_path / "esp"), "--layout", "esp-medsam"])
    assert res.exit_code == 0, res.output
    assert "modality ids other than" not in res.output and "own split" not in res.output
    listing = json.loads((tmp_path / "esp" / "retinal_data_split.json").read_text())
    theirs = json.loads(split_file.read_text())
    samples = {s["meta.json"]["source_id"]: s for s in read_built(built).values()}
    assert sum(map(len, listing.values())) == len(samples) == 7
    for split, names in listing.items():
        assert set(names) <= set(theirs[split])  # the authors' split, not medprep's
        for name in names:
            assert (tmp_path / "esp" / "image_1024" / name).exists()
            sample = samples[name.rsplit(".", 1)[0]]
            assert authors_loader_id(name) == int(sample["modality.cls"]) == sample["meta.json"]["modality_id"]
    assert manifest["modality_id"] == 3


def test_lung_ids_follow_the_file_names(tmp_path):
    """One build, two ids: Shenzhen's CHNCXR_* 1 and Montgomery's MCUCXR_* 3; the manifest keeps the most
    common one and samples.jsonl each sample's."""
    src = make_fake("lung", tmp_path / "src")
    built = build("lung", src, tmp_path / "shards", size=64, modality_map="esp-medsam-released").out
    ids = {s["meta.json"]["source_id"]: int(s["modality.cls"]) for s in read_built(built).values()}
    assert {i for sid, i in ids.items() if sid.startswith("CHNCXR")} == {1}
    assert {i for sid, i in ids.items() if sid.startswith("MCUCXR")} == {3}
    rows = [json.loads(x) for x in (built / "samples.jsonl").read_text().splitlines()]
    assert {r["source_id"]: r["modality_id"] for r in rows} == ids
    counts = [list(ids.values()).count(i) for i in (1, 3)]
    assert json.loads((built / "manifest.json").read_text())["modality_id"] == (1 if counts[0] >= counts[1] else 3)


def test_datasets_command_lists_the_ids_per_dataset():
    res = CliRunner().invoke(app, ["datasets", "lung"])
    assert res.exit_code == 0, res.output
    assert "x-ray (ids: default 1, esp-medsam 1, medsam-laptop 3)" in res.output
    assert "1: CHNCXR_0001_0" in res.output and "3: MCUCXR_0001_0" in res.output
    assert "lung_data_split.json (released by the authors)" in res.output
