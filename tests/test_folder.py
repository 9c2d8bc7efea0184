"""``--dataset folder``: any 2D image/mask folder with a pairing rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_built
from typer.testing import CliRunner

from medprep.cli import app
from medprep.prep import LayoutError, build, get_converter, synthetic
from medprep.prep.archive import open_tree

SIZE = 64


def write_pairs(root: Path, names: list[str], mask_of, seed: int = 0) -> dict[str, np.ndarray]:
    """Images ``root/<name>`` (RGB PNG) and their masks at ``root/mask_of(name)``; returns name -> mask."""
    rng = np.random.default_rng(seed)
    masks = {}
    for name in names:
        img, mask = synthetic.scene(40, 48, rng)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(synthetic.png(img))
        (root / mask_of(name)).parent.mkdir(parents=True, exist_ok=True)
        (root / mask_of(name)).write_bytes(synthetic.png(synthetic.u8(mask)))
        masks[name] = mask
    return masks


def test_build_with_pattern_names_keys_after_name(tmp_path):
    src = tmp_path / "src"
    write_pairs(src, [f"imgs/lesion_{i}.png" for i in range(4)],
                lambda n: n.replace("imgs/", "labels/").replace(".png", "_mask.png"))
    (src / "imgs" / "lonely.png").write_bytes(synthetic.png(np.zeros((8, 8, 3), np.uint8)))  # no mask
    (src / "labels" / "orphan_mask.png").write_bytes(synthetic.png(np.zeros((8, 8), np.uint8)))  # no image
    (src / "imgs" / "notes.txt").write_text("not an image")
    result = build("folder", src, tmp_path / "out", size=SIZE, images="imgs/*", masks="labels/{stem}_mask.png",
                   modality="dermoscopy", name="mylesions")
    c = result.manifest.counts
    assert (c["samples"], c["failures"], c["inputs"]) == (4, 2, 6)
    assert c["splits"] == {"test": 4}
    reasons = {f["source_id"]: f["reason"] for f in result.failures}
    assert reasons["lonely"] == "image without mask: expected labels/lonely_mask.png"
    assert reasons["orphan_mask"] == "mask without image"
    assert result.manifest.dataset == "mylesions" and result.manifest.modality_id == 0
    samples = read_built(result.out)
    assert sorted(samples) == [f"mylesions-lesion_{i}" for i in range(4)]
    meta = samples["mylesions-lesion_0"]["meta.json"]
    assert meta["dataset"] == "mylesions" and meta["modality"] == "dermoscopy" and meta["foreground"] > 0
    assert samples["mylesions-lesion_0"]["modality.cls"] == "0"


def test_nested_folders_keep_ids_apart_and_masks_beside_images(tmp_path):
    src = tmp_path / "src"
    truth = write_pairs(src, ["data/case1/001.png", "data/case2/001.png"],
                        lambda n: n.replace(".png", "_mask.png"))
    extra = np.zeros((40, 48), bool)
    extra[2:6, 2:6] = True
    (src / "data/case1/001_mask_2.png").write_bytes(synthetic.png(synthetic.u8(extra)))  # a second mask: OR-merged
    conv = get_converter("folder", images="data/*/*.png", masks="data/{parent}/{stem}_mask*.png",
                         modality="ultrasound", name="bus2")
    tree = open_tree(src)
    records, failures = conv.discover(tree)
    assert not failures  # mask files matching the pattern are not taken for images
    assert [r.source_id for r in records] == ["case1/001", "case2/001"]
    rec = records[0]
    assert rec.masks == ("data/case1/001_mask.png", "data/case1/001_mask_2.png")
    loaded = conv.load({f: tree.read(f) for f in rec.files()}, rec)
    np.testing.assert_array_equal(loaded.mask, truth["data/case1/001.png"] | extra)
    result = build("folder", src, tmp_path / "out", size=SIZE, images="data/*/*.png",
                   masks="{dir}/{stem}_mask*.png", modality="ultrasound", name="bus2")
    assert sorted(read_built(result.out)) == ["bus2-case1_001", "bus2-case2_001"]
    assert result.manifest.counts["failures"] == 0


def test_bad_options_say_what_is_needed(tmp_path):
    with pytest.raises(ValueError, match="--masks, --modality"):
        get_converter("folder", images="*.png", name="x")
    with pytest.raises(ValueError, match="lower-case"):
        get_converter("folder", images="*.png", masks="{stem}.png", modality="x-ray", name="My Set")
    with pytest.raises(ValueError, match="modality 'mri'"):
        build("folder", tmp_path, tmp_path / "out", images="*.png", masks="m/{stem}.png", modality="mri", name="x")
    write_pairs(tmp_path / "src", ["a.png"], lambda n: f"m/{n}")
    with pytest.raises(LayoutError, match="matches no file"):
        build("folder", tmp_path / "src", tmp_path / "out", images="imgs/*.png", masks="m/{stem}.png",
              modality="x-ray", name="x")
    with pytest.raises(ValueError, match="unknown placeholder"):
        build("folder", tmp_path / "src", tmp_path / "out", images="*.png", masks="m/{id}.png", modality="x-ray",
              name="x")
    with pytest.raises(ValueError, match="does not take"):
        get_converter("drive", images="*.png")


def test_cli_folder_build(tmp_path):
    write_pairs(tmp_path / "src", [f"imgs/{i}.png" for i in range(3)], lambda n: n.replace("imgs/", "gt/"))
    runner = CliRunner()
    r = runner.invoke(app, ["build", "--dataset", "folder", "--src", str(tmp_path / "src"), "--out",
                            str(tmp_path / "out"), "--images", "imgs/*.png", "--masks", "gt/{name}", "--modality",
                            "fundus", "--name", "myfundus", "--size", str(SIZE), "--split-rule", "811"])
    assert r.exit_code == 0, r.output
    assert "myfundus: 3 inputs found = 3 samples written" in r.output
    manifest = json.loads((tmp_path / "out" / "myfundus" / "manifest.json").read_text())
    assert manifest["dataset"] == "myfundus" and manifest["modality_id"] == 2
    assert manifest["params"]["options"] == {"images": "imgs/*.png", "masks": "gt/{name}", "modality": "fundus",
                                             "name": "myfundus"}
    listed = runner.invoke(app, ["datasets"])
    assert "folder" in listed.output and "--images" in listed.output
