"""--dataset medsam-npz: CVPR 2024 "MedSAM on laptop" npz files, 2D and 3D."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import convert_all as convert_any
from conftest import read_built
from medprep.prep import BuildError, SourceTree, build, get_converter
from medprep.prep import synthetic3d as s3


def convert_all(src: Path, **options) -> tuple[dict, list]:
    return convert_any("medsam-npz", src, **options)


def test_3d_npz_slices_match_the_volume_converter(tmp_path):
    """The npz holds the phantom windowed at 40/400 in display order: the same slices as --dataset volumes."""
    src = s3.make_medsam_npz(tmp_path / "npz")
    samples, failures = convert_all(src, modality="ct", images="CT/*.npz")
    assert not failures
    vol_src = s3.make_volumes(tmp_path / "vol", cases=1, axcodes="PIL")
    conv = get_converter("volumes", modality="ct")
    tree = SourceTree(vol_src)
    rec = conv.discover(tree)[0][0]
    ref = dict(conv.samples({f: tree.read(f) for f in rec.files()}, rec))
    got = {k.replace("CT_Phantom_0000", "case_000"): v for k, v in samples.items() if "0000" in k.split("_z")[0]}
    assert sorted(got) == sorted(ref) and len(ref) == 9
    for sid, r in ref.items():
        assert np.array_equal(got[sid].image, r.image) and np.array_equal(got[sid].mask, r.mask), sid
    info = samples["CT_Phantom_0000_z0008"].info
    assert info["npz_spacing"] == list(s3.SPACING) and info["spacing"] == [2.5, 0.8, 0.9]
    assert info["slice_index"] == 8 and info["num_slices"] == s3.SHAPE[2] and info["slice_axis"] == "axis0"


def test_2d_npz_binary_and_each(tmp_path):
    src = s3.make_medsam_npz(tmp_path)
    binary, fails = convert_all(src, modality="dermoscopy")
    assert sorted(binary) == ["Dermoscopy_Fake_0000", "Dermoscopy_Fake_0001"]
    assert [f.source_id for f in fails] == ["CT_Phantom_0000", "CT_Phantom_0001"]
    assert "prefix says modality ct" in fails[0].reason
    with np.load(src / "Dermoscopy" / "Dermoscopy_Fake_0001.npz") as npz:
        imgs, gts = npz["imgs"], npz["gts"]
    s = binary["Dermoscopy_Fake_0001"]
    assert np.array_equal(s.image, imgs) and np.array_equal(s.mask, gts > 0) and s.info["labels"] == [1, 2]
    assert "npz_spacing" not in s.info
    each, _ = convert_all(src, modality="dermoscopy", multilabel="each")
    assert sorted(each) == ["Dermoscopy_Fake_0000_l1", "Dermoscopy_Fake_0001_l1", "Dermoscopy_Fake_0001_l2"]
    assert np.array_equal(each["Dermoscopy_Fake_0001_l2"].mask, gts == 2)


def test_min_object_pixels(tmp_path):
    gts = np.zeros((3, 20, 20), np.uint8)
    gts[0, 2:6, 2:6] = 1  # 16 pixels
    gts[1, 10:12, 10:12] = 1  # 4 pixels only
    s3.write_medsam_npz(tmp_path / "MR_Small_0001.npz", np.full(gts.shape, 7, np.uint8), gts, (1.0, 1.0, 3.0))
    kept, _ = convert_all(tmp_path, modality="mr", min_object_pixels=5)
    assert sorted(kept) == ["MR_Small_0001_z0000"]
    assert sorted(convert_all(tmp_path, modality="mr")[0]) == ["MR_Small_0001_z0000", "MR_Small_0001_z0001"]


@pytest.mark.parametrize("arrays, message", [
    ({"imgs": np.zeros((8, 8, 3), np.uint8)}, "no gts array; found imgs"),
    ({"imgs": np.zeros((8, 9, 3), np.uint8), "gts": np.ones((8, 8), np.uint8)}, "2D gts (8, 8) but imgs (8, 9, 3)"),
    ({"imgs": np.zeros((4, 8, 8), np.uint8), "gts": np.ones((4, 8, 9), np.uint8)}, "expected both (D, H, W)"),
    ({"imgs": np.zeros((8, 8), np.uint8), "gts": np.full((8, 8), 0.5)}, "non-integer values"),
])
def test_bad_npz_is_a_failure_with_reason(tmp_path, arrays, message):
    with open(tmp_path / "US_Bad_0001.npz", "wb") as f:
        np.savez(f, **arrays)
    (tmp_path / "US_Good_0001.npz").write_bytes(b"not a zip")
    with pytest.raises(BuildError, match="nothing was converted: all 2 inputs failed") as failed:
        build("medsam-npz", tmp_path, tmp_path / "out", size=64, modality="ultrasound")
    assert message in str(failed.value) and "cannot read US_Good_0001.npz as npz" in str(failed.value)


def test_build_stamps_modality_and_meta(tmp_path):
    src = s3.make_medsam_npz(tmp_path / "src")
    res = build("medsam-npz", src, tmp_path / "out", size=64, modality="ct", name="ct-phantom", split_rule="test",
                images="CT/*.npz")
    c = res.manifest.counts
    assert c["inputs"] == c["converted"] == 2 and c["samples"] == 18 and not res.failures
    built = read_built(res.out)
    s = built["ct-phantom-CT_Phantom_0001_z0011"]
    meta = s["meta.json"]
    assert s["modality.cls"] == "6" and meta["modality"] == "ct" and meta["spacing"] == [2.5, 0.8, 0.9]
    assert s["mask.png"].shape == (64, 64) and s["image.png"].shape == (64, 64, 3)
    with pytest.raises(ValueError, match="needs -o modality"):
        get_converter("medsam-npz")
