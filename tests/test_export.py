"""medprep export: the layouts are read the way their consumers read them, and hold the shards' values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medprep.cli import app
from medprep.loaders import MedShardsIndexed
from medprep.manifests import open_dataset
from medprep.prep import build, synthetic
from medprep.prep.export import export

PIXEL_MEAN = [123.675, 116.280, 103.530]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, sizes in (("drive", {"n_train": 6, "n_test": 2}), ("udiat", {"n": 10}), ("montgomery", {"n": 6}),
                        ("shenzhen", {"n": 6})):
        src = synthetic.make(name, root / "src" / name, **sizes)
        out[name] = build(name, src, root / "built", size=64, shard_samples=4).out
    return out


class AuthorsBinaryLoader(torch.utils.data.Dataset):
    """Reads an esp-medsam export the way ESP-MedSAM's ``BinaryLoader`` does: ids from the split json, the id cut at
    the first dot, ``image_1024/<id>.png`` RGB as float32, ``mask_1024/<id>.png`` read as grey with every nonzero
    pixel set to 255, and the image normalised by ``(x - pixel_mean) / pixel_std`` with ``pixel_std`` built from
    ``pixel_mean``."""

    def __init__(self, path: Path, jsfiles: list[str]):
        self.path, self.jsfiles = path, jsfiles
        self.pixel_mean = torch.Tensor(PIXEL_MEAN).view(-1, 1, 1)
        self.pixel_std = torch.Tensor(PIXEL_MEAN).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.jsfiles)

    def __getitem__(self, idx: int):
        image_id = list(self.jsfiles[idx].split("."))[0]
        img = np.asarray(Image.open(os.path.join(self.path, "image_1024/", image_id) + ".png"))[:, :, :3]
        img = img.astype("float32")
        mask = np.array(Image.open(os.path.join(self.path, "mask_1024/", image_id) + ".png"))
        mask[mask > 0] = 255
        x = (torch.from_numpy(img).permute(2, 0, 1) - self.pixel_mean) / self.pixel_std
        return img, x, mask, image_id


def test_esp_medsam_layout_reads_like_the_authors_loader(built, tmp_path):
    result = export(built["udiat"], tmp_path, "esp-medsam")
    assert result.index == f"{tmp_path}/ultrasound_data_split.json"
    splits = json.loads(Path(result.index).read_text())
    ds = open_dataset(built["udiat"])
    assert {k: len(v) for k, v in splits.items()} == ds.manifest.counts["splits"]
    for split, files in splits.items():
        assert all(f.startswith("ultra_") and f.endswith(".png") for f in files)  # the authors' renamed ids
        shards = MedShardsIndexed(built["udiat"], split, ["image", "mask", "meta"], normalize="none")
        esp = MedShardsIndexed(built["udiat"], split, ["image"], normalize="esp-medsam")
        theirs = AuthorsBinaryLoader(tmp_path, files)
        assert len(theirs) == len(shards)
        for i in range(len(theirs)):
            img, x, mask, image_id = theirs[i]
            ours = shards[i]
            assert image_id == f"ultra_{ours['meta']['source_id']}"
            assert np.array_equal(img, ours["image"].permute(1, 2, 0).numpy())
            assert np.array_equal(mask, (ours["mask"][0].numpy() * 255).astype(np.uint8))
            assert torch.allclose(x, esp[i]["image"], atol=1e-5)
    assert result.notes and "1024" in result.notes[0]


def test_esp_medsam_merges_lung_sets_and_rejects_clashes(built, tmp_path):
    result = export([built["montgomery"], built["shenzhen"]], tmp_path / "lung", "esp-medsam")
    splits = json.loads(Path(result.index).read_text())
    assert Path(result.index).name == "lung_data_split.json"
    ids = [f for v in splits.values() for f in v]
    expected = sum(open_dataset(built[d]).manifest.nsamples() for d in ("montgomery", "shenzhen"))
    assert len(ids) == len(set(ids)) == expected == 11  # one Shenzhen image has no mask
    assert {f[:6] for f in ids} == {"MCUCXR", "CHNCXR"}
    assert sorted(os.listdir(tmp_path / "lung" / "image_1024")) == sorted(ids)
    with pytest.raises(ValueError, match="pass --name"):
        export([built["drive"], built["udiat"]], tmp_path / "x", "esp-medsam")
    with pytest.raises(ValueError, match="both export as"):
        export([built["drive"], built["drive"]], tmp_path / "y", "esp-medsam")


def test_nnunet_raw_layout(built, tmp_path):
    result = export([built["drive"], built["udiat"]], tmp_path, "nnunet", dataset_id=502, name="fundus+us")
    root = tmp_path / "Dataset502_fundusus"
    assert result.out == str(root)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"} and meta["file_ending"] == ".png"
    assert meta["labels"] == {"background": 0, "foreground": 1}
    cases = sorted(p.name[: -len(".png")] for p in (root / "labelsTr").iterdir())
    assert meta["numTraining"] == len(cases) == sum(
        open_dataset(built[d]).manifest.nsamples(s) for d in ("drive", "udiat") for s in ("train", "valid"))
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [f"{c}_0000.png" for c in cases]
    fold = json.loads((root / "splits_final.json").read_text())[0]
    assert sorted(fold["train"] + fold["val"]) == cases
    assert set(fold["val"]) == {k for d in ("drive", "udiat") for k in open_dataset(built[d]).keys("valid")}
    test_keys = open_dataset(built["drive"]).keys("test")
    assert sorted(p.name for p in (root / "labelsTs").iterdir() if p.name.startswith("drive")) == \
        sorted(f"{k}.png" for k in test_keys)
    shards = MedShardsIndexed(built["drive"], "test", ["image", "mask", "key"], normalize="none")
    for s in (shards[i] for i in range(len(shards))):
        label = np.asarray(Image.open(root / "labelsTs" / f"{s['key']}.png"))
        image = np.asarray(Image.open(root / "imagesTs" / f"{s['key']}_0000.png"))
        assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
        assert np.array_equal(label, s["mask"][0].numpy().astype(np.uint8))
        assert np.array_equal(image, s["image"].permute(1, 2, 0).numpy().astype(np.uint8))


def test_folder_layout_via_cli_is_deterministic(built, tmp_path):
    runner = CliRunner()
    for out in ("a", "b"):
        res = runner.invoke(app, ["export", str(built["drive"]), "--out", str(tmp_path / out), "--layout", "folder",
                                  "--split", "train", "--split", "test"])
        assert res.exit_code == 0, res.output
        assert "exported 7 samples (train 5, test 2)" in res.output
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 14 and {p.parts[0] for p in files} == {"train", "test"}
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in files)
    res = runner.invoke(app, ["export", str(built["drive"]), "--out", str(tmp_path / "c"), "--layout", "coco"])
    assert res.exit_code == 2 and "expected one of esp-medsam, nnunet, folder" in res.output
    res = runner.invoke(app, ["export", str(built["drive"]), "--out", str(tmp_path / "c"), "--layout", "folder",
                              "--split", "holdout"])
    assert res.exit_code == 2 and "holdout" in res.output
