"""--dataset medsam-npz: CVPR 2024 "MedSAM on laptop" npz files, 2D and 3D."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import convert_all as convert_any
from conftest import read_built
from medprep.loaders import MedShards
from medprep.manifests.modalities import MODALITY_MAPS
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
    binary, fails = convert_all(src, images="Dermoscopy/*.npz")
    assert sorted(binary) == ["Dermoscopy_Fake_0000", "Dermoscopy_Fake_0001"] and not fails
    with np.load(src / "Dermoscopy" / "Dermoscopy_Fake_0001.npz") as npz:
        imgs, gts = npz["imgs"], npz["gts"]
    s = binary["Dermoscopy_Fake_0001"]
    assert np.array_equal(s.image, imgs) and np.array_equal(s.mask, gts > 0) and s.info["labels"] == [1, 2]
    assert "npz_spacing" not in s.info
    each, _ = convert_all(src, images="Dermoscopy/*.npz", multilabel="each")
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


def _built_ids(out: Path) -> dict[str, tuple[str, int]]:
    """source id -> (meta modality, modality.cls) of every sample of a build."""
    return {s["meta.json"]["source_id"]: (s["meta.json"]["modality"], int(s["modality.cls"]))
            for s in read_built(out).values()}


@pytest.mark.parametrize("table", ["default", "medsam-laptop"])
def test_every_challenge_modality_builds_with_its_id(tmp_path, table):
    """One build of the 11 modalities, each file named as the challenge names them (training CT_/PET_/XRay_/...,
    demo 2DBox_Mammography_demo / 3DBox_MR_demo): every sample gets the id of its file's modality."""
    src = s3.make_challenge_npz(tmp_path / "src")
    res = build("medsam-npz", src, tmp_path / "out", size=64, modality_map=table, split_rule="test")
    assert not res.failures and res.manifest.counts["inputs"] == res.manifest.counts["converted"] == 11
    ids = MODALITY_MAPS[table]
    got = _built_ids(res.out)
    assert len(got) == 8 + 3 * 3  # one sample per 2D file, the 3 slices with foreground of each 3D file
    expected = {}
    for name, modality in s3.CHALLENGE_FILES.items():
        stem = name[: -len(".npz")]
        for sid in ([stem] if modality not in ("ct", "mr", "pet") else [f"{stem}_z{z:04d}" for z in (1, 2, 3)]):
            expected[sid] = (modality, ids[modality])
    assert got == expected
    assert sorted({m for m, _ in got.values()}) == sorted(MODALITY_MAPS["medsam-laptop"])
    if table == "medsam-laptop":
        assert [ids[m] for m in ("ct", "mr", "pet", "x-ray", "ultrasound", "mammography", "oct", "endoscopy",
                                 "fundus", "dermoscopy", "microscopy")] == list(range(11))
    rows = [json.loads(x) for x in (res.out / "samples.jsonl").read_text().splitlines()]
    assert {r["source_id"]: (r["modality"], r["modality_id"]) for r in rows} == expected
    assert res.manifest.modality in ("ct", "mr", "pet")  # the most common: 3 slices each, ties by name
    with np.load(src / "PET_autoPET_fdg_0001.npz") as npz:
        assert npz["gts"].dtype == np.uint16 and npz["imgs"].shape == (4, 40, 48)


def test_default_table_keeps_its_ids_and_adds_the_challenges():
    assert {k: MODALITY_MAPS["default"][k] for k in ("dermoscopy", "x-ray", "fundus", "colonoscopy", "ultrasound",
                                                      "microscopy", "ct", "mr")} == {
        "dermoscopy": 0, "x-ray": 1, "fundus": 2, "colonoscopy": 3, "ultrasound": 4, "microscopy": 5, "ct": 6, "mr": 7}
    assert set(MODALITY_MAPS["medsam-laptop"]) <= set(MODALITY_MAPS["default"])
    ids = list(MODALITY_MAPS["default"].values())
    assert len(set(ids)) == len(ids)


def test_modality_option_overrides_the_prefix(tmp_path):
    src = s3.make_challenge_npz(tmp_path / "src")
    res = build("medsam-npz", src, tmp_path / "out", size=64, modality="ultrasound", split_rule="test",
                images="*_Mammography_*.npz")
    assert _built_ids(res.out) == {"2DBox_Mammography_demo": ("ultrasound", 4)}
    assert res.manifest.modality == "ultrasound" and res.manifest.modality_id == 4


def test_file_without_prefix_or_gts_is_a_named_failure(tmp_path):
    """A challenge test input (imgs + boxes, no gts) and a file named without a modality prefix are failures
    saying what is missing; the other files build."""
    src = s3.make_challenge_npz(tmp_path / "src")
    with open(src / "2DBox_OCT_test.npz", "wb") as f:
        np.savez_compressed(f, imgs=np.zeros((32, 32, 3), np.uint8), boxes=np.array([[2, 2, 20, 20]]))
    (src / "Brain_0001.npz").write_bytes((src / "OCT_Intraretinal-Cystoid_0001.npz").read_bytes())
    res = build("medsam-npz", src, tmp_path / "out", size=64, split_rule="test")
    reasons = {f["source_id"]: f["reason"] for f in
               (json.loads(x) for x in (res.out / "failures.jsonl").read_text().splitlines())}
    assert set(reasons) == {"2DBox_OCT_test", "Brain_0001"}
    assert "2DBox_OCT_test.npz: no gts array; found imgs, boxes (a challenge test input" in reasons["2DBox_OCT_test"]
    assert "Brain_0001.npz starts with no modality prefix" in reasons["Brain_0001"]
    assert "-o modality=NAME" in reasons["Brain_0001"]
    assert res.manifest.counts["converted"] == 11


def test_user_modality_map(tmp_path):
    src = s3.make_challenge_npz(tmp_path / "src")
    table = {m: 100 + i for i, m in enumerate(sorted(MODALITY_MAPS["medsam-laptop"]))}
    (tmp_path / "mine.json").write_text(json.dumps(table))
    res = build("medsam-npz", src, tmp_path / "out", size=64, split_rule="test",
                modality_map=str(tmp_path / "mine.json"))
    assert {m: i for m, i in _built_ids(res.out).values()} == table
    params = res.manifest.params
    assert params["modality_map"] == "mine.json" and params["modality_table"] == table
    meta = next(iter(read_built(res.out).values()))["meta.json"]
    assert meta["modality_map"] == "mine.json"
    assert str(tmp_path / "mine.json") in (res.out / "recipe.toml").read_text()
    # the readers check modality.cls against the build's own table (ids 100+ here), not the built-in ones
    ids = {int(s["modality_id"]) for s in MedShards(res.out, split="test", fields=["modality_id"])}
    assert ids == set(table.values())


@pytest.mark.parametrize("content, message", [
    ('{"ct": 0, "mr": 0}', "field 'mr' has value 0, the id of 'ct' already"),
    ('{"ct": -1}', "field 'ct' has value -1; expected a whole number >= 0"),
    ('{"ct": "0"}', 'field \'ct\' has value "0"; expected a whole number >= 0'),
    ('{"ct": 1.5}', "field 'ct' has value 1.5"),
    ('{"ct": true}', "field 'ct' has value true"),
    ('["ct"]', "expected a non-empty JSON object of modality names to ids"),
    ('{"ct": 0,', "not JSON"),
])
def test_malformed_modality_map_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        build("medsam-npz", tmp_path, tmp_path / "out", size=64, modality="ct", modality_map=str(path))
    assert f"--modality-map {path}" in str(e.value) and message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_modality_map_must_hold_every_modality_of_the_build(tmp_path):
    (tmp_path / "ct_only.json").write_text('{"ct": 0}')
    with pytest.raises(ValueError, match=r"modality 'fundus' is not in the '.*ct_only.json' table \(ct\); add it"):
        build("drive", tmp_path, tmp_path / "out", modality_map=str(tmp_path / "ct_only.json"))
    src = s3.make_challenge_npz(tmp_path / "src")
    res = build("medsam-npz", src, tmp_path / "out2", size=64, split_rule="test",
                modality_map=str(tmp_path / "ct_only.json"), max_failures=20)
    reasons = [json.loads(x)["reason"] for x in (res.out / "failures.jsonl").read_text().splitlines()]
    assert len(reasons) == 10 and all("is not in the" in r and "ct_only.json" in r for r in reasons)
    with pytest.raises(ValueError, match="cannot read the file"):
        build("drive", tmp_path, tmp_path / "out3", modality_map=str(tmp_path / "missing.json"))


def test_cli_modality_map_file(tmp_path):
    from typer.testing import CliRunner

    from medprep.cli import app

    src = s3.make_challenge_npz(tmp_path / "src")
    table = {m: i for i, m in enumerate(sorted(MODALITY_MAPS["medsam-laptop"]))}
    (tmp_path / "mine.json").write_text(json.dumps(table))
    (tmp_path / "bad.json").write_text('{"ct": 0, "mr": -3}')
    base = ["build", "--dataset", "medsam-npz", "--src", str(src), "--size", "64", "--split-rule", "test"]
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "out"), "--modality-map",
                                   str(tmp_path / "mine.json")])
    assert res.exit_code == 0, res.output
    bad = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "out2"), "--modality-map",
                                   str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and f"--modality-map {tmp_path / 'bad.json'}: field 'mr' has value -3" in bad.output
