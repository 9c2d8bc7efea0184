"""The CLI is a thin wrapper over the Python API: same results, user-facing errors, summaries."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medprep.cli import app, parse_size
from medprep.prep import synthetic
from medprep.prep.datasets import registered

runner = CliRunner()


def test_build_verify_and_datasets(tmp_path):
    synthetic.make("drive", tmp_path / "src", n_train=5, n_test=2)
    res = runner.invoke(app, ["build", "--dataset", "drive", "--src", str(tmp_path / "src"), "--out",
                              str(tmp_path / "shards"), "--size", "64", "--shard-samples", "2"])
    assert res.exit_code == 0, res.output
    assert "7 inputs found = 7 samples written + 0 failures" in res.output
    manifest = json.loads((tmp_path / "shards" / "drive" / "manifest.json").read_text())
    assert manifest["params"]["size"] == 64 and manifest["counts"]["splits"] == {"train": 4, "valid": 1, "test": 2}
    res = runner.invoke(app, ["verify", str(tmp_path / "shards" / "drive")])
    assert res.exit_code == 0 and "ok: 4 shards, 7 samples" in res.output
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 0 and "drive" in res.output and "fundus (id 2)" in res.output


def test_build_errors_are_short_and_clear(tmp_path):
    res = runner.invoke(app, ["build", "--dataset", "drive", "--src", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "expected training/images/*_training.tif under" in res.output
    res = runner.invoke(app, ["build", "--dataset", "nope", "--src", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown --dataset 'nope'" in res.output


def test_demo_builds_every_source_domain(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--size", "64"])
    assert res.exit_code == 0, res.output
    for name in registered("source"):
        assert (tmp_path / "shards" / name / "manifest.json").exists()
        assert f"{name}: " in res.output


def test_parse_size():
    assert parse_size("1GB") == 10**9 and parse_size("2GiB") == 2 << 30 and parse_size("500MB") == 5 * 10**8
    assert parse_size("1234") == 1234
