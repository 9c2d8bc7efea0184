"""Split rules: the papers' 8:1:1 counts, seeded reproducibility, groups, and the authors' split files."""

from __future__ import annotations

import json

import pytest
from conftest import read_built

from medprep.prep import build, synthetic
from medprep.prep.splits import ratio_counts, read_split_file, split_811, split_groups


@pytest.mark.parametrize("n,expected", [(163, (130, 16, 17)), (612, (490, 61, 61)), (670, (536, 67, 67)),
                                        (704, (563, 70, 71)), (20, (16, 2, 2)), (1, (1, 0, 0))])
def test_ratio_counts(n, expected):
    assert ratio_counts(n) == expected


def test_split_811_counts_seed_and_order_independence():
    ids = [f"{i:06d}" for i in range(1, 164)]
    a = split_811(ids, seed=0)
    assert [sum(v == s for v in a.values()) for s in ("train", "valid", "test")] == [130, 16, 17]
    assert split_811(list(reversed(ids)), seed=0) == a  # sorted first: input order does not matter
    assert split_811(ids, seed=1) != a


def test_split_811_natural_sort():
    """'2' sorts before '10', so the result does not depend on zero padding quirks."""
    assert split_811([str(i) for i in range(1, 13)], 3) == split_811([str(i) for i in reversed(range(1, 13))], 3)


def test_split_groups_keeps_groups_whole():
    groups = {f"f{i}": f"seq{i // 7}" for i in range(70)}
    out = split_groups(groups, seed=0)
    for g in set(groups.values()):
        assert len({out[i] for i, gg in groups.items() if gg == g}) == 1
    counts = [sum(v == s for v in out.values()) for s in ("train", "valid", "test")]
    assert counts[0] >= 56 and sum(counts) == 70 and counts[2] > 0


def test_read_split_file_reports_foreign_keys(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"train": ["a.png", "b.png"], "valid": ["c.png"], "test": ["d.png"], "p": ["a.png"]}))
    mapping, ignored = read_split_file(f)
    assert mapping == {"a": "train", "b": "train", "c": "valid", "d": "test"}
    assert ignored == {"p": ["a"]}


def test_read_split_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected"):
        read_split_file(bad)
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"train": ["a.png"], "test": ["a.png"]}))
    with pytest.raises(ValueError, match="both"):
        read_split_file(both)


def test_build_with_authors_split_file_and_unmatched_ids(tmp_path):
    """UDIAT ids are renamed ultra_NNNNNN in the authors' files; unmatched ids on both sides are reported."""
    synthetic.make("udiat", tmp_path / "src", n=6)
    split = {"train": ["ultra_000001.png", "ultra_000002.png", "ultra_000003.png"],
             "valid": ["ultra_000004.png"], "test": ["ultra_000005.png", "ultra_000099.png"], "p": ["ultra_000001.png"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    result = build("udiat", tmp_path / "src", tmp_path / "out", size=64, split_file=tmp_path / "split.json")
    rep = result.manifest.split_report
    assert rep["rule"] == "file" and rep["matched"] == 5
    assert rep["in_file_not_found"] == ["ultra_000099"]
    assert rep["found_not_in_file"] == ["000006"]
    assert rep["ignored_keys"] == {"p": 1}
    assert result.manifest.counts["splits"] == {"train": 3, "valid": 1, "test": 1}
    assert [f["source_id"] for f in result.failures] == ["000006"]
    assert "not listed in --split-file" in result.failures[0]["reason"]
    assert "1 listed but not found" in result.summary() and "1 found but not listed" in result.summary()
    splits = {s["meta.json"]["source_id"]: s["meta.json"]["split"] for s in read_built(result.out).values()}
    assert splits == {"000001": "train", "000002": "train", "000003": "train", "000004": "valid", "000005": "test"}
    assert result.manifest.params["split_file"]["sha256"]


def test_real_split_file_format_drive(tmp_path):
    """The retinal split file lists DRIVE stems like '22_training.png' and '03_test.png'."""
    synthetic.make("drive", tmp_path / "src", n_train=4, n_test=2)
    split = {"train": ["21_training.png", "22_training.png"], "valid": ["23_training.png", "24_training.png"],
             "test": ["01_test.png", "02_test.png"]}
    (tmp_path / "retinal.json").write_text(json.dumps(split))
    result = build("drive", tmp_path / "src", tmp_path / "out", size=64, split_file=tmp_path / "retinal.json")
    assert result.manifest.counts["splits"] == {"train": 2, "valid": 2, "test": 2}
    assert not result.failures


def test_split_rule_override(tmp_path):
    synthetic.make("drive", tmp_path / "src", n_train=3, n_test=2)
    result = build("drive", tmp_path / "src", tmp_path / "out", size=64, split_rule="test")
    assert result.manifest.counts["splits"] == {"test": 5}
    with pytest.raises(Exception, match="split-rule"):
        build("drive", tmp_path / "src", tmp_path / "out2", size=64, split_rule="random")
