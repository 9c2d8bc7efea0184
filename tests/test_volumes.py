"""--dataset volumes: phantoms with known content (spheres in known slices, known spacing, non-identity
directions) written as NIfTI, MHA, NRRD and DICOM, converted through nibabel and SimpleITK."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import convert_all as convert_any
from conftest import read_built
from medprep.prep import LayoutError, SourceTree, build, get_converter
from medprep.prep import synthetic3d as s3
from medprep.prep.volume_io import PercentileClip, Window, remove_small_objects

S1, S2 = s3.SPHERES  # label 1 (100 HU), slices 6-10; label 2 (300 HU), slices 9-13 with one-voxel tips at 9 and 13
SPECK_K = s3.SPECK[0][2]  # slice 18: a 2x2-pixel object of label 1


def convert_all(src: Path, **options) -> tuple[dict, list]:
    """sample id -> Loaded for every record found under ``src`` (CT unless told), and the discovery failures."""
    return convert_any("volumes", src, **{"modality": "ct", **options})


def ids(samples: dict, case: str = "case_000") -> list[str]:
    return sorted(s for s in samples if s.startswith(case + "_"))


def z(ks, case: str = "case_000", letter: str = "z") -> list[str]:
    return [f"{case}_{letter}{k:04d}" for k in ks]


def test_sphere_ranges_follow_from_radius_and_spacing():
    assert list(S1.slice_range(2, s3.SPACING)) == [6, 7, 8, 9, 10]  # 6 mm radius / 2.5 mm slices
    assert list(S2.slice_range(2, s3.SPACING)) == [9, 10, 11, 12, 13]


@pytest.mark.parametrize("min_pixels, expected", [
    (0, [6, 7, 8, 9, 10, 11, 12, 13, SPECK_K]),
    (2, [6, 7, 8, 9, 10, 11, 12, SPECK_K]),  # slice 13 holds only the one-voxel tip of sphere 2
    (5, [6, 7, 8, 9, 10, 11, 12]),  # and the 4-pixel speck goes too
])
def test_which_slices_survive(tmp_path, min_pixels, expected):
    src = s3.make_volumes(tmp_path, cases=2, axcodes="LPS")
    samples, failures = convert_all(src, min_object_pixels=min_pixels)
    assert not failures
    assert ids(samples) == z(expected)
    shifted = [k + 1 if k != SPECK_K else k for k in expected]  # case 1: spheres one slice up, speck in place
    assert ids(samples, "case_001") == z(shifted, "case_001")
    tip = samples["case_000_z0009"]  # sphere 1 plus the tip of sphere 2
    assert tip.info["labels"] == ([1, 2] if min_pixels < 2 else [1])
    assert tip.info.get("removed_objects", 0) == (1 if min_pixels >= 2 else 0)


def test_remove_small_objects_counts_8_connected_components():
    m = np.zeros((10, 10), bool)
    m[1, 1] = m[2, 2] = True  # one diagonal component of 2 pixels
    m[5:8, 5:8] = True  # 9 pixels
    out, removed = remove_small_objects(m, 3)
    assert removed == 1 and out.sum() == 9 and not out[1, 1]
    assert remove_small_objects(m, 2)[1] == 0


def test_slice_count_spacing_and_index_in_meta(tmp_path):
    src = s3.make_volumes(tmp_path, cases=1)
    for axis, letter, n, spacing in (("axial", "z", 24, [2.5, 0.8, 0.9]), ("coronal", "y", 36, [0.8, 2.5, 0.9]),
                                     ("sagittal", "x", 40, [0.9, 2.5, 0.8])):
        samples, _ = convert_all(src, axis=axis)
        a = "xyz".index(letter)
        ks = sorted({*S1.slice_range(a, s3.SPACING), *S2.slice_range(a, s3.SPACING),
                     *range(s3.SPECK[0][a], s3.SPECK[0][a] + (s3.SPECK[1] if a < 2 else 1))})
        assert ids(samples) == z(ks, letter=letter), axis
        info = samples[z([ks[0]], letter=letter)[0]].info
        assert info["spacing"] == spacing and info["num_slices"] == n and info["slice_index"] == ks[0]
        assert info["slice_axis"] == axis and info["orientation"] == "RAS" and info["volume_id"] == "case_000"


def test_axial_display_orientation_is_radiological(tmp_path):
    """Anterior up, the patient's right on the image's left: RAS voxel (i, j) lands at row J-1-j, column I-1-i."""
    src = s3.make_volumes(tmp_path, cases=1, axcodes="PIL")
    samples, _ = convert_all(src)
    I, J, _ = s3.SHAPE
    for sphere, k in ((S1, 8), (S2, 11)):
        rows, cols = np.nonzero(samples[f"case_000_z{k:04d}"].mask)
        assert (rows.mean(), cols.mean()) == (J - 1 - sphere.center[1], I - 1 - sphere.center[0])
    assert samples["case_000_z0008"].info["source_orientation"] == "PIL"


@pytest.mark.parametrize("axcodes", ["PIL", "RAS", "ASL", "LPI"])
def test_orientation_does_not_change_the_slices(tmp_path, axcodes):
    ref, _ = convert_all(s3.make_volumes(tmp_path / "lps", cases=1, axcodes="LPS"), axis="coronal")
    got, _ = convert_all(s3.make_volumes(tmp_path / axcodes, cases=1, axcodes=axcodes), axis="coronal")
    assert sorted(got) == sorted(ref)
    for sid, r in ref.items():
        assert np.array_equal(got[sid].image, r.image) and np.array_equal(got[sid].mask, r.mask), sid


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_nibabel_and_simpleitk_give_identical_samples(tmp_path, suffix):
    ref, _ = convert_all(s3.make_volumes(tmp_path / "nib", cases=1, axcodes="PIL"), reader="nibabel")
    got, failures = convert_all(s3.make_volumes(tmp_path / "itk", cases=1, axcodes="PIL", suffix=suffix),
                                reader="sitk")
    assert not failures and sorted(got) == sorted(ref) and len(ref) == 9
    for sid, r in ref.items():
        assert np.array_equal(got[sid].image, r.image) and np.array_equal(got[sid].mask, r.mask)
        assert got[sid].info == r.info


def test_dicom_series_with_nifti_labels(tmp_path):
    image, label, affine = s3.phantom()
    img, aff = s3.reorder(image, affine, "PIL")
    lab, _ = s3.reorder(label, affine, "PIL")
    for c in range(2):
        s3.write_dicom_series(tmp_path / "dicom" / f"case_{c:03d}", img, aff, uid=f"1.2.826.0.1.3680043.9.7.{c}")
        s3.write_nifti(tmp_path / "labels" / f"case_{c:03d}.nii.gz", lab, aff)
    ref, _ = convert_all(s3.make_volumes(tmp_path / "nifti", cases=1, axcodes="LPS"))
    got, failures = convert_all(tmp_path, images="dicom/*/*.dcm", labels="labels/{stem}.nii.gz")
    assert not failures and ids(got) == ids(ref) and ids(got, "case_001") == z([6, 7, 8, 9, 10, 11, 12, 13, SPECK_K],
                                                                               "case_001")
    for sid in ids(ref):
        assert np.array_equal(got[sid].image, ref[sid].image) and np.array_equal(got[sid].mask, ref[sid].mask)
    rec = get_converter("volumes", modality="ct", images="dicom/*/*.dcm", labels="labels/{stem}.nii.gz").discover(
        SourceTree(tmp_path))[0][0]
    assert rec.image == "dicom/case_000" and len(rec.files()) == img.shape[2] + 1  # a file per slice + the label
    for f in (tmp_path / "dicom" / "case_001").iterdir():
        f.rename(f.with_suffix(""))  # DICOM files often have no suffix
    plain, failures = convert_all(tmp_path, images="dicom/*/*", labels="labels/{stem}.nii.gz", dicom=True)
    assert not failures and ids(plain, "case_001") == ids(got, "case_001")


def test_msd_ids_ending_in_four_digits_are_not_nnunet_channels(tmp_path):
    src = s3.make_volumes(tmp_path, cases=1)
    for part in ("imagesTr", "labelsTr"):
        (src / part / "case_000.nii.gz").rename(src / part / "scan_0001.nii.gz")
    samples, failures = convert_all(src)
    assert not failures and ids(samples, "scan_0001") == z([6, 7, 8, 9, 10, 11, 12, 13, SPECK_K], "scan_0001")


def test_window_arithmetic():
    w = Window(40, 400)
    assert w(np.array([-1000, -160, 40, 100, 240, 3000])).tolist() == [0, 0, 128, 166, 255, 255]
    assert Window.named("lung") == Window(-600, 1500)
    with pytest.raises(ValueError, match="preset 'nope'"):
        Window.named("nope")
    with pytest.raises(ValueError, match="width"):
        Window(0, 0)


def test_ct_window_default_custom_and_per_label(tmp_path):
    src = s3.make_volumes(tmp_path, cases=1)
    default, _ = convert_all(src)
    img = default["case_000_z0008"].image
    assert img.dtype == np.uint8 and set(np.unique(img)) == {0, 166}  # air -> 0, 100 HU -> 165.75 -> 166
    assert default["case_000_z0011"].image.max() == 255  # 300 HU is above the window
    assert default["case_000_z0008"].info["intensity"] == {"rule": "ct_window", "level": 40.0, "width": 400.0}
    custom, _ = convert_all(src, window_level=0, window_width=1000)
    assert set(np.unique(custom["case_000_z0011"].image)) == {0, 204}  # (300 + 500) / 1000 * 255
    each, _ = convert_all(src, multilabel="each", label_windows={"2": [0, 1000]})
    assert set(np.unique(each["case_000_z0010_l1"].image)) == {0, 166, 255}  # default window for label 1
    assert set(np.unique(each["case_000_z0010_l2"].image)) == {0, 153, 204}  # 100 HU -> 153, 300 HU -> 204


def test_mr_percentile_clipping(tmp_path):
    src = s3.make_volumes(tmp_path, cases=1, modality="MR")
    samples, _ = convert_all(src, modality="mr")
    _, label, _ = s3.phantom()
    data = s3.mr_like(label, seed=0)
    lo, hi = np.percentile(data[data != 0].astype(np.float64), [0.5, 99.5])
    s = samples["case_000_z0008"]
    assert s.info["intensity"] == {"rule": "percentile_clip", "percentiles": [0.5, 99.5], "low": round(lo, 6),
                                   "high": round(hi, 6)}
    raw = data.transpose(2, 1, 0)[8, ::-1, ::-1]
    assert np.array_equal(s.image, PercentileClip(lo, hi)(raw))
    assert (s.image[raw == 0] == 0).all() and (s.image[raw >= hi] == 255).all() and (s.image[raw <= lo] == 0).all()
    mid = (raw > lo) & (raw < hi)
    assert mid.sum() > 100 and np.array_equal(s.image[mid], np.round((raw[mid] - lo) / (hi - lo) * 255))


def test_multilabel_binary_vs_each(tmp_path):
    src = s3.make_volumes(tmp_path, cases=1)
    binary, _ = convert_all(src)
    each, _ = convert_all(src, multilabel="each")
    assert ids(each) == sorted([f"{s}_l1" for s in z([6, 7, 8, 9, 10, SPECK_K])]
                               + [f"{s}_l2" for s in z([9, 10, 11, 12, 13])])
    both = binary["case_000_z0010"]
    assert both.info["labels"] == [1, 2]
    l1, l2 = each["case_000_z0010_l1"], each["case_000_z0010_l2"]
    assert l1.info["label"] == 1 and l2.info["label"] == 2
    assert np.array_equal(l1.mask | l2.mask, both.mask) and not (l1.mask & l2.mask).any()


@pytest.mark.parametrize("change, field", [
    ("shape", "shape 40x36x24"), ("spacing", "spacing (0.9, 0.8, 2.5)"), ("origin", "origin (-18, -14, -30)"),
    ("direction", "direction (1, 0, 0)"),
])
def test_label_grid_mismatch_is_a_failure_naming_both_grids(tmp_path, change, field):
    src = s3.make_volumes(tmp_path / "src", cases=2, axcodes="RAS")
    image, label, affine = s3.phantom()
    bad = affine.copy()
    if change == "shape":
        label = label[:, :, :-1]
    elif change == "spacing":
        bad[2, 2] = 3.0
    elif change == "origin":
        bad[0, 3] += 1.0
    else:
        c, s_ = np.cos(np.radians(10)), np.sin(np.radians(10))
        bad[:3, :3] = np.array([[c, -s_, 0], [s_, c, 0], [0, 0, 1]]) @ affine[:3, :3]  # rotated 10 degrees about S
    s3.write_nifti(src / "labelsTr" / "case_001.nii.gz", label, bad)
    res = build("volumes", src, tmp_path / "out", size=64, modality="ct")
    c = res.manifest.counts
    assert c["inputs"] == 2 and c["converted"] == 1 and c["failures"] == 1
    (f,) = res.failures
    assert f["source_id"] == "case_001" and "label grid differs from image grid" in f["reason"]
    image_part, label_part = f["reason"].split("; label ")
    assert field in image_part and "imagesTr/case_001.nii.gz" in image_part
    assert "labelsTr/case_001.nii.gz" in label_part and field not in label_part


def test_build_accounts_for_every_volume(tmp_path):
    src = s3.make_volumes(tmp_path / "src", cases=4, layout="nnunet", axcodes="PIL")
    (src / "labelsTr" / "case_003.nii.gz").unlink()  # image without label
    empty = np.zeros(s3.SHAPE, np.uint8)
    s3.write_nifti(src / "labelsTr" / "case_002.nii.gz", *s3.reorder(empty, s3.phantom()[2], "PIL"))
    s3.write_nifti(src / "labelsTr" / "orphan.nii.gz", empty, s3.phantom()[2])
    (src / "imagesTr" / "case_000_0001.nii.gz").write_bytes((src / "imagesTr" / "case_000_0000.nii.gz").read_bytes())
    (src / "imagesTr" / "notes.txt").write_text("x")
    res = build("volumes", src, tmp_path / "out", size=64, modality="ct", name="phantom", split_rule="test")
    c = res.manifest.counts
    reasons = {f["source_id"]: f["reason"] for f in res.failures}
    assert c["inputs"] == c["converted"] + c["failures"] == 6 and c["converted"] == 2  # _0001 is a channel
    assert reasons["case_003"].startswith("image without mask") and "labelsTr/case_003.nii.gz" in reasons["case_003"]
    assert "no slice with foreground" in reasons["case_002"] and reasons["orphan"] == "mask without image"
    assert reasons["notes.txt"].startswith("not a volume file")
    built = read_built(res.out)
    assert res.manifest.modality == "ct" and res.manifest.modality_id == 6 and len(built) == c["samples"] == 18
    meta = built["phantom-case_000_z0008"]["meta.json"]
    assert meta["modality_id"] == 6 and meta["spacing"] == [2.5, 0.8, 0.9] and meta["slice_index"] == 8
    assert meta["source"] == {"image": "imagesTr/case_000_0000.nii.gz", "masks": ["labelsTr/case_000.nii.gz"]}
    assert built["phantom-case_000_z0008"]["modality.cls"] == "6"
    assert json.loads((tmp_path / "out" / "phantom" / "manifest.json").read_text())["params"]["options"]["name"] == "phantom"


def test_bad_options_and_declared_modality(tmp_path):
    with pytest.raises(ValueError, match="needs -o modality"):
        get_converter("volumes")
    with pytest.raises(ValueError, match="axis"):
        get_converter("volumes", modality="ct", axis="oblique")
    with pytest.raises(ValueError, match="need -o intensity=window"):
        get_converter("volumes", modality="mr", preset="lung")
    with pytest.raises(ValueError, match="multilabel=each"):
        get_converter("volumes", modality="ct", label_windows={"1": "lung"})
    with pytest.raises(ValueError, match="go together"):
        get_converter("volumes", modality="ct", images="*.nii.gz")
    src = s3.make_volumes(tmp_path, cases=1, modality="MRI")
    with pytest.raises(LayoutError, match="declares channel 0 as 'MRI' but -o modality=ct"):
        convert_all(src)


def test_nibabel_reader_refuses_other_formats(tmp_path):
    src = s3.make_volumes(tmp_path, cases=1, suffix=".mha")
    samples, failures = convert_all(src, reader="nibabel")
    assert not samples and len(failures) == 1 and "reads NIfTI only" in failures[0].reason


def test_zip_archive_gives_identical_shards(tmp_path):
    import zipfile

    src = s3.make_volumes(tmp_path / "src", cases=2, axcodes="PIL")
    with zipfile.ZipFile(tmp_path / "Task01_Phantom.zip", "w") as z:
        for p in sorted(src.rglob("*")):
            z.write(p, p.relative_to(src.parent))
    a = build("volumes", src, tmp_path / "a", size=64, modality="ct")
    b = build("volumes", tmp_path / "Task01_Phantom.zip", tmp_path / "b", size=64, modality="ct")
    assert a.manifest.counts["samples"] == 18 and [s.sha256 for s in a.manifest.shards] == [
        s.sha256 for s in b.manifest.shards]


def test_cli_options_pass_through(tmp_path):
    from typer.testing import CliRunner

    from medprep.cli import app

    src = s3.make_volumes(tmp_path / "src", cases=1, suffix=".mha")
    res = CliRunner().invoke(app, [
        "build", "--dataset", "volumes", "--src", str(src), "--out", str(tmp_path / "out"), "--size", "64",
        "--split-rule", "test", "-o", "modality=ct", "-o", "name=phantom", "-o", "axis=coronal",
        "-o", "multilabel=each", "-o", "min-object-pixels=5", "-o", 'label_windows={"2": "bone"}'])
    assert res.exit_code == 0, res.output
    assert "phantom: 1 inputs found = 1 converted" in res.output
    built = read_built(tmp_path / "out" / "phantom")  # the folder is named after -o name
    meta = built["phantom-case_000_y0020_l2"]["meta.json"]
    assert meta["intensity"] == {"rule": "ct_window", "level": 400.0, "width": 1800.0} and meta["label"] == 2
    assert meta["slice_axis"] == "coronal" and meta["spacing"] == [0.8, 2.5, 0.9]
    res = CliRunner().invoke(app, ["build", "--dataset", "volumes", "--src", str(src), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "needs -o modality=ct" in res.output


@pytest.mark.parametrize("reader", ["nibabel", "sitk"])
def test_4d_image_channel(tmp_path, reader):
    src = s3.make_volumes(tmp_path, cases=1, axcodes="PIL")
    ref, _ = convert_all(src)
    path = src / "imagesTr" / "case_000.nii.gz"
    ct = nib.load(path)
    data = np.asanyarray(ct.dataobj)
    s3.write_nifti(path, np.stack([np.zeros_like(data), data], axis=3), ct.affine)
    got, _ = convert_all(src, channel=1, reader=reader)
    assert sorted(got) == sorted(ref) and all(np.array_equal(got[k].image, ref[k].image) for k in ref)
    with pytest.raises(ValueError, match="has 2 channels"):
        convert_all(src, channel=2, reader=reader)
