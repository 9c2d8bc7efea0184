"""The source-domain converters' own quirks, on fake data in the exact official layout (the counts, keys, masks,
patch targets and modality every dataset shares are checked by the registry battery, tests/test_registry.py)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from conftest import read_built

from medprep.prep import build, synthetic

SIZE = 64


def test_montgomery_or_merges_left_and_right(tmp_path):
    src = synthetic.make("montgomery", tmp_path / "src", n=2)
    build("montgomery", tmp_path / "src", tmp_path / "out", size=SIZE, split_rule="test")
    for key, s in read_built(tmp_path / "out" / "montgomery").items():
        name = s["meta.json"]["source_id"] + ".png"
        both = np.zeros((96, 80), np.uint8)
        for side in ("leftMask", "rightMask"):
            both |= cv2.imread(str(src / "ManualMask" / side / name), cv2.IMREAD_GRAYSCALE)
        expected = cv2.resize(both, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(s["mask.png"], expected)
        assert s["meta.json"]["image_normalisation"]["source_channels"] == 1


def test_montgomery_16bit_is_rescaled(tmp_path):
    synthetic.make("montgomery", tmp_path / "src", n=2)
    build("montgomery", tmp_path / "src", tmp_path / "out", size=SIZE, split_rule="test")
    metas = {s["meta.json"]["source_id"]: s for s in read_built(tmp_path / "out" / "montgomery").values()}
    sixteen = metas["MCUCXR_0001_0"]
    assert sixteen["meta.json"]["image_normalisation"]["source_dtype"] == "uint16"
    assert sixteen["meta.json"]["image_normalisation"]["intensity"].startswith("minmax")
    # min-max stretched to the full 8-bit range (area downsampling softens the extremes a little)
    assert int(sixteen["image.png"].max()) - int(sixteen["image.png"].min()) > 180


def test_dsb_instance_map(tmp_path):
    src = synthetic.make("dsb2018", tmp_path / "src", n=3)
    build("dsb2018", tmp_path / "src", tmp_path / "out", size=SIZE, split_rule="test")
    for s in read_built(tmp_path / "out" / "dsb2018").values():
        inst = s["inst.png"]
        assert inst.dtype == np.uint16
        np.testing.assert_array_equal(inst > 0, s["mask.png"] > 0)
        sid = s["meta.json"]["source_id"]
        n_files = len(list((src / sid / "masks").glob("*.png")))
        assert s["meta.json"]["instances"] == n_files
        assert set(np.unique(inst)) - {0} <= set(range(1, n_files + 1))
        assert s["meta.json"]["image_normalisation"]["source_channels"] == 4  # RGBA input


def test_drive_fov_and_official_split(tmp_path):
    synthetic.make("drive", tmp_path / "src", n_train=20, n_test=3)
    result = build("drive", tmp_path / "src", tmp_path / "out", size=SIZE)
    assert result.manifest.counts["splits"] == {"train": 16, "valid": 4, "test": 3}
    for s in read_built(tmp_path / "out" / "drive").values():
        assert s["fov.png"].shape == (SIZE, SIZE) and set(np.unique(s["fov.png"])) == {0, 255}
        part = "training" if s["meta.json"]["split"] in ("train", "valid") else "test"
        assert s["meta.json"]["source_id"].endswith(part)


def test_drive_test_without_labels_are_failures(tmp_path):
    src = synthetic.make("drive", tmp_path / "src", n_train=3, n_test=2)
    shutil.rmtree(src / "test" / "1st_manual")  # the current download lacks test labels
    result = build("drive", tmp_path / "src", tmp_path / "out", size=SIZE)
    assert result.manifest.counts["failures"] == 2
    assert all("image without mask" in f["reason"] and "1st_manual" in f["reason"] for f in result.failures)


def test_cvc_png_variant_with_sequences(tmp_path):
    synthetic.make("cvc-clinicdb", tmp_path / "src", n=12, variant="png", sequences=4)
    # 4 whole sequences of 3 frames all land in train (test_faults_build: an error without --allow-empty-split)
    result = build("cvc-clinicdb", tmp_path / "src", tmp_path / "out", size=SIZE, group_by="sequence",
                   allow_empty_split=True)
    samples = read_built(tmp_path / "out" / "cvc-clinicdb").values()
    by_group: dict[str, set[str]] = {}
    for s in samples:
        by_group.setdefault(s["meta.json"]["group"], set()).add(s["meta.json"]["split"])
    assert len(by_group) == 4 and all(len(v) == 1 for v in by_group.values())
    assert result.manifest.split_report["group_by"] == "sequence"


def test_group_by_without_table_is_an_error(tmp_path):
    synthetic.make("cvc-clinicdb", tmp_path / "src", n=4)
    with pytest.raises(ValueError, match="pass --groups-file FILE, a CSV table with a frame column and a sequence"):
        build("cvc-clinicdb", tmp_path / "src", tmp_path / "out", size=SIZE, group_by="sequence")


def test_esp_medsam_modality_map(tmp_path):
    synthetic.make("udiat", tmp_path / "src", n=3)
    result = build("udiat", tmp_path / "src", tmp_path / "out", size=SIZE, modality_map="esp-medsam")
    assert result.manifest.modality_id == 2
    assert {s["modality.cls"] for s in read_built(tmp_path / "out" / "udiat").values()} == {"2"}


def test_longest_side_resize_pads_and_records_valid_region(tmp_path):
    synthetic.make("isic2018", tmp_path / "src", n=(4, 0, 0))
    build("isic2018", tmp_path / "src", tmp_path / "out", size=SIZE, resize="longest")
    for s in read_built(tmp_path / "out" / "isic2018").values():
        h, w = s["meta.json"]["original_hw"]
        vh, vw = s["meta.json"]["valid_hw"]
        assert max(vh, vw) == SIZE and abs(vh / vw - h / w) < 0.05
        assert not s["image.png"][vh:].any() and not s["image.png"][:, vw:].any()
        assert not s["mask.png"][vh:].any() and not s["mask.png"][:, vw:].any()
        assert s["meta.json"]["resize"] == "longest"


def test_lung_is_montgomery_plus_shenzhen(tmp_path):
    synthetic.make("montgomery", tmp_path / "src", n=6)
    synthetic.make("shenzhen", tmp_path / "src", n=5, unmasked=1)
    result = build("lung", tmp_path / "src", tmp_path / "out", size=SIZE)
    assert result.manifest.counts["inputs"] == 11 and result.manifest.counts["samples"] == 10
    assert result.manifest.counts["splits"] == {"train": 8, "valid": 1, "test": 1}
    ids = {s["meta.json"]["source_id"] for s in read_built(tmp_path / "out" / "lung").values()}
    assert {i[:6] for i in ids} == {"MCUCXR", "CHNCXR"}
    assert {s["modality.cls"] for s in read_built(tmp_path / "out" / "lung").values()} == {"1"}
