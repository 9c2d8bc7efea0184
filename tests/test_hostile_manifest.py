"""The files of a built dataset that readers parse are checked against their schema with one error naming the file,
the field, the value and what was expected: ``manifest.json`` (modality in its table, modality id, counts),
``samples.jsonl`` (each row: key, split, shard of the manifest, JSON at all); and ``preview --tile`` is bounded."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from medprep.cli import app
from medprep.manifests import open_dataset
from medprep.preview import MAX_TILE, preview


@pytest.fixture()
def built(tiny_drive):
    return tiny_drive


@pytest.fixture()
def copy(built, tmp_path):
    return shutil.copytree(built, tmp_path / "drive")


MANIFEST_CASES = [
    ("modality", {"modality": "sonar"}, r"modality is 'sonar', expected one of the build's modality table \(dermoscopy, "),
    ("modality_id-99", {"modality_id": 99}, r"modality_id is 99, expected an id of the build's modality table \(0, 1, 2, "),
    ("modality_id--5", {"modality_id": -5}, r"modality_id is -5"),
    ("counts-negative", {"counts": {"samples": -1}}, r"counts\.samples is -1, expected a non-negative integer"),
    ("counts-splits", {"counts": {"splits": {"train": "2"}}}, r"counts\.splits is \{'train': '2'\}, expected"),
]


@pytest.mark.parametrize("case,change,message", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_a_lying_manifest_is_refused_naming_the_field(copy, case, change, message):
    doc = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**doc, **change}))
    with pytest.raises(ValueError, match=message) as e:
        open_dataset(copy)
    assert str(copy / "manifest.json") in str(e.value)
    res = CliRunner().invoke(app, ["info", str(copy)])
    assert res.exit_code == 2 and "manifest.json" in res.output and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("table", [["ct"], {"ct": "0"}, {"ct": -1}, {}, {"ct": 1.5}])
def test_a_lying_modality_table_is_refused_naming_the_field(copy, table):
    doc = json.loads((copy / "manifest.json").read_text())
    doc["params"]["modality_table"] = table
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"params\.modality_table is .*, expected an object of modality names to "
                                         r"whole-number ids >= 0"):
        open_dataset(copy)
    res = CliRunner().invoke(app, ["info", str(copy)])
    assert res.exit_code == 2 and "modality_table" in res.output and "Traceback" not in res.output, res.output


def _rows(root):
    return [json.loads(line) for line in (root / "samples.jsonl").read_text().splitlines()]


ROW_CASES = [
    ("shard-other", lambda r: r.update(shard="../../etc/x.tar"), r"line 2: field 'shard' is '\.\./\.\./etc/x\.tar', "
                                                                r"expected a shard the manifest lists"),
    ("split-other", lambda r: r.update(split="valid"), r"line 2: field 'split' is 'valid', expected '\w+' \(the split "
                                                       r"of shard"),
    ("key-null", lambda r: r.update(key=None), r"line 2: field 'key' is None, expected a non-empty string"),
    ("key-missing", lambda r: r.pop("key"), r"line 2: field 'key' is 'missing'"),
]


@pytest.mark.parametrize("case,change,message", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_a_lying_samples_row_is_refused_naming_its_line(copy, case, change, message):
    rows = _rows(copy)
    change(rows[1])
    (copy / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=message) as e:
        list(open_dataset(copy).samples())
    assert str(copy / "samples.jsonl") in str(e.value)


def test_a_samples_line_that_is_not_json_is_named(copy):
    lines = (copy / "samples.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (copy / "samples.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{copy / 'samples.jsonl'} line 3 is not JSON"):
        list(open_dataset(copy).samples())


def test_preview_tile_is_bounded(built, tmp_path):
    out = tmp_path / "p.png"
    for tile, n in ((30000, 1), (MAX_TILE + 1, 1), (16, 1), (2048, 64)):
        res = CliRunner().invoke(app, ["preview", str(built), "--out", str(out), "--tile", str(tile), "--n", str(n)])
        assert res.exit_code == 2 and "--tile" in res.output and "Traceback" not in res.output, res.output
        assert not out.exists()
    assert preview(str(built), out, n=2, tile=64).size[0] > 0
