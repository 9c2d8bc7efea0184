"""The unseen-domain converters' own quirks, on fake data in the official layout (the counts, keys, masks, patch
targets and modality every dataset shares are checked by the registry battery, tests/test_registry.py)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import read_built
from PIL import Image

from medprep.prep import LayoutError, build, get_converter, synthetic
from medprep.prep.archive import open_tree

SIZE = 64


def test_split_rule_811_still_available(tmp_path):
    src = synthetic.make("kvasir-seg", tmp_path / "src", n=10)
    result = build("kvasir-seg", src, tmp_path / "out", size=SIZE, split_rule="811")
    assert result.manifest.counts["splits"] == {"train": 8, "valid": 1, "test": 1}


def load(name: str, src: Path, source_id: str, **options):
    """Discover ``name`` under ``src`` and decode the record ``source_id`` (converter level, before resizing)."""
    conv = get_converter(name, **options)
    tree = open_tree(src)
    records, failures = conv.discover(tree)
    rec = next(r for r in records if r.source_id == source_id)
    return rec, conv.load({f: tree.read(f) for f in rec.files()}, rec), records, failures


def grey(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path))
    return a[..., :3].max(axis=2) if a.ndim == 3 else a


def test_busi_or_merges_extra_masks_keeps_normal_and_records_class(tmp_path):
    src = synthetic.make("busi", tmp_path / "src", n=(3, 3, 2))
    rec, loaded, records, _ = load("busi", src, "benign (2)")
    assert rec.masks == ("benign/benign (2)_mask.png", "benign/benign (2)_mask_1.png")
    first, second = grey(src / "benign" / "benign (2)_mask.png") > 0, grey(src / "benign" / "benign (2)_mask_1.png") > 0
    assert (second & ~first).any()  # the extra lesion adds pixels
    np.testing.assert_array_equal(loaded.mask, first | second)
    assert {r.source_id for r in records} == {f"{c} ({i})" for c, n in (("benign", 3), ("malignant", 3),
                                                                        ("normal", 2)) for i in range(1, n + 1)}
    for sid, channels in (("malignant (1)", 3), ("malignant (2)", 4)):  # RGB and RGBA mask files
        _, rgb, _, _ = load("busi", src, sid)
        assert np.asarray(Image.open(src / "malignant" / f"{sid}_mask.png")).shape[2] == channels
        np.testing.assert_array_equal(rgb.mask, grey(src / "malignant" / f"{sid}_mask.png") > 0)
    _, normal, _, _ = load("busi", src, "normal (1)")
    assert not normal.mask.any()
    build("busi", src, tmp_path / "out", size=SIZE)
    metas = {s["meta.json"]["source_id"]: s["meta.json"] for s in read_built(tmp_path / "out" / "busi").values()}
    assert metas["normal (1)"]["class"] == "normal" and metas["normal (1)"]["foreground"] == 0
    assert metas["benign (2)"]["class"] == "benign" and metas["benign (2)"]["lesions"] == 2
    assert metas["malignant (3)"]["class"] == "malignant"


def test_tnbc_rgba_images_and_macosx_ignored(tmp_path):
    src = synthetic.make("tnbc", tmp_path / "src", slides=2, per_slide=2)
    assert (tmp_path / "src" / "__MACOSX").is_dir()
    rec, loaded, records, failures = load("tnbc", tmp_path / "src", "02_1")
    assert len(records) == 4 and not failures
    assert rec.masks == ("TNBC_NucleiSegmentation/GT_02/02_1.png",)
    rgba = np.asarray(Image.open(src / "Slide_02" / "02_1.png"))
    assert rgba.shape[2] == 4
    np.testing.assert_array_equal(loaded.image, rgba)
    build("tnbc", tmp_path / "src", tmp_path / "out", size=32, patch_sizes=(16, 32))
    s = next(v for v in read_built(tmp_path / "out" / "tnbc").values() if v["meta.json"]["source_id"] == "02_1")
    np.testing.assert_array_equal(s["image.png"], rgba[..., :3])  # alpha dropped, size kept (32)
    assert s["meta.json"]["image_normalisation"]["source_channels"] == 4
    assert s["meta.json"]["image_normalisation"]["alpha_dropped"] is False


def test_kvasir_jpeg_masks_are_thresholded(tmp_path):
    src = synthetic.make("kvasir-seg", tmp_path / "src", n=3)
    path = sorted((src / "masks").glob("*.jpg"))[0]
    raw = np.asarray(Image.open(path))
    values = np.unique(raw)
    assert values.size > 2 and 0 < values[1] < 30 and values[-1] == 255  # JPEG ringing around 0 and 255
    _, loaded, _, _ = load("kvasir-seg", src, path.stem)
    np.testing.assert_array_equal(loaded.mask, raw.max(axis=2) > 127)


def test_colon_mirror_rgb_soft_masks_and_folder_choice(tmp_path):
    for name, n in (("cvc-colondb", 4), ("cvc-300", 3), ("etis-larib", 2)):
        synthetic.make(name, tmp_path / "TestDataset", n=n)
    raw = np.asarray(Image.open(tmp_path / "TestDataset" / "CVC-300" / "masks" / "2.png"))
    assert raw.ndim == 3 and len(np.unique(raw)) > 2  # RGB, not binary
    _, loaded, _, _ = load("cvc-300", tmp_path / "TestDataset", "2")
    np.testing.assert_array_equal(loaded.mask, raw.max(axis=2) >= 128)
    for name, n in (("cvc-colondb", 4), ("cvc-300", 3), ("etis-larib", 2)):  # one --src holding all three
        records, _ = get_converter(name).discover(open_tree(tmp_path / "TestDataset"))
        assert len(records) == n, name


def test_stare_gzipped_ppm_in_tars_and_annotators(tmp_path):
    src = synthetic.make("stare", tmp_path / "src", n=5, labelled=3)
    assert sorted(p.name for p in src.iterdir()) == ["labels-ah.tar", "labels-vk.tar", "stare-images.tar"]
    rec, ah, records, failures = load("stare", src, "im0002")
    assert rec.image == "stare-images/im0002.ppm.gz" and rec.masks == ("labels-ah/im0002.ah.ppm.gz",)
    with tarfile.open(src / "labels-ah.tar") as tf:
        truth = np.asarray(Image.open(io.BytesIO(gzip.decompress(tf.extractfile("im0002.ah.ppm.gz").read()))))
    np.testing.assert_array_equal(ah.mask, truth.max(axis=2) > 0)
    assert ah.image.shape == (61, 70, 3)
    assert [f.source_id for f in failures] == ["im0077", "im0081"]
    assert "labels-ah" in failures[0].reason
    _, vk, _, _ = load("stare", src, "im0002", annotator="vk")
    assert vk.mask.sum() > ah.mask.sum()  # the other annotator's (thicker) vessels
    with pytest.raises(ValueError, match="annotator"):
        get_converter("stare", annotator="xx").discover(open_tree(src))
    with pytest.raises(LayoutError, match="pass the folder holding them"):
        build("stare", tmp_path, tmp_path / "out", size=SIZE)  # a folder above the tars: says what to pass


def test_chase_annotators(tmp_path):
    src = synthetic.make("chase-db1", tmp_path / "src", n=1)
    rec, first, records, _ = load("chase-db1", src, "Image_01L")
    assert rec.masks == ("Image_01L_1stHO.png",) and len(records) == 2
    _, second, _, _ = load("chase-db1", src, "Image_01L", annotator="2ndHO")
    np.testing.assert_array_equal(second.mask, grey(src / "Image_01L_2ndHO.png") > 0)
    assert second.mask.sum() < first.mask.sum()


def test_hrf_upper_case_jpg_tiff_masks_and_fov(tmp_path):
    src = synthetic.make("hrf", tmp_path / "src", n=2)
    assert (src / "images" / "01_dr.JPG").exists()
    rec, loaded, records, failures = load("hrf", src, "01_dr")
    assert len(records) == 6 and not failures
    assert rec.image == "images/01_dr.JPG" and rec.extras == {"fov": "mask/01_dr_mask.tif"}
    np.testing.assert_array_equal(loaded.mask, grey(src / "manual1" / "01_dr.tif") > 0)
    np.testing.assert_array_equal(loaded.extras["fov"], grey(src / "mask" / "01_dr_mask.tif") > 0)
    build("hrf", src, tmp_path / "out", size=SIZE)
    s = next(v for v in read_built(tmp_path / "out" / "hrf").values() if v["meta.json"]["source_id"] == "01_dr")
    assert s["fov.png"].shape == (SIZE, SIZE) and s["meta.json"]["condition"] == "diabetic retinopathy"


def test_ph2_nested_bmp_and_roi_skipped(tmp_path):
    src = synthetic.make("ph2", tmp_path / "src", n=3)
    cases = src / "PH2 Dataset images"
    rec, loaded, records, failures = load("ph2", src, "IMD002")
    assert [r.source_id for r in records] == ["IMD002", "IMD005", "IMD008"] and not failures
    assert rec.masks == ("PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp",)
    assert Image.open(cases / "IMD002" / "IMD002_lesion" / "IMD002_lesion.bmp").mode == "1"  # a 1-bit BMP
    np.testing.assert_array_equal(loaded.mask, grey(cases / "IMD002" / "IMD002_lesion" / "IMD002_lesion.bmp") > 0)
    assert not any("_roi" in f for r in records for f in r.files())


def test_nih_lung_folders_and_options(tmp_path):
    src = synthetic.make("nih-lung", tmp_path / "src", n=3)
    (src / "images").rename(src / "cxr")
    (src / "masks").rename(src / "lungs")
    for p in (src / "lungs").iterdir():
        p.rename(p.with_name(p.stem + "_mask.png"))  # the alternative mask naming
    records, failures = get_converter("nih-lung", images="cxr", masks="lungs").discover(open_tree(src))
    assert [r.masks[0] for r in records] == [f"lungs/NIH_000{i}_mask.png" for i in (1, 2, 3)] and not failures
    with pytest.raises(LayoutError, match="images/"):
        get_converter("nih-lung").discover(open_tree(src))


def test_monuseg_polygons_to_mask_and_instances(tmp_path):
    src = synthetic.make("monuseg", tmp_path / "src", n_train=1, n_test=1)
    records, failures = get_converter("monuseg").discover(open_tree(src))
    assert not failures and sorted(r.split for r in records) == ["test", "train"]
    rec = next(r for r in records if r.split == "train")
    assert rec.masks[0].startswith("MoNuSeg 2018 Training Data/Annotations/")
    tree = open_tree(src)
    loaded = get_converter("monuseg").load({f: tree.read(f) for f in rec.files()}, rec)
    inst = loaded.inst
    assert inst.dtype == np.uint16 and set(np.unique(inst)) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(loaded.mask, inst > 0)
    assert loaded.info["instances"] == 4 and loaded.info["overlap_pixels"] > 0  # polygons 3 and 4 overlap
    ref = np.zeros((64, 64), np.uint8)
    cv2.fillPoly(ref, [np.round(synthetic.nucleus(46.0, 16.0, 4.0)).astype(np.int32)], 1)
    np.testing.assert_array_equal(inst == 2, ref.astype(bool))  # the second polygon, alone, exactly
    # a damaged XML becomes a failure with its reason; --split-rule official keeps training/test (the test split,
    # its only input failing, comes out empty: allowed here)
    xml = next((src / "MoNuSegTestData").glob("*.xml"))
    xml.write_bytes(b"<Annotations><Regions>")
    result = build("monuseg", src, tmp_path / "out", size=SIZE, split_rule="official", allow_empty_split=True)
    assert result.manifest.counts["splits"] == {"train": 1}
    assert "not an Aperio" in result.failures[0]["reason"]
    s = next(iter(read_built(result.out).values()))
    assert s["inst.png"].dtype == np.uint16 and s["meta.json"]["part"] == "train"


@pytest.mark.parametrize("name, writer, ids", [
    ("tnbc", {"slides": 2, "per_slide": 2}, ["TNBC_01_1", "TNBC_01_2", "TNBC_02_1"]),
    ("cvc-colondb", {"n": 4}, ["colondb_1", "colondb_2", "colondb_3"]),
    ("nih-lung", {"n": 4}, ["NIH_0001", "NIH_0002", "NIH_0004"]),
])
def test_authors_split_files_with_renamed_ids(tmp_path, name, writer, ids):
    """The released split files name TNBC 'TNBC_04_4', CVC-ColonDB 'colondb_299', NIH 'NIH_0041'."""
    src = synthetic.make(name, tmp_path / "src", **writer)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [f"{ids[0]}.png", f"{ids[1]}.png"], "valid": [], "test": [f"{ids[2]}.png"],
                                 "p": ["x.png"]}))
    result = build(name, src, tmp_path / "out", size=SIZE, split_file=split)
    assert result.manifest.counts["splits"] == {"train": 2, "test": 1}
    rep = result.manifest.split_report
    assert rep["matched"] == 3 and len(rep["found_not_in_file"]) == 1
    assert [f["stage"] for f in result.failures] == ["split"]  # the unlisted one is reported, not dropped
