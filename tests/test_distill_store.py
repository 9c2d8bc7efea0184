"""The zarr teacher store: round trip per dtype, int8 quality, bytes per sample, run identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from medprep.distill import FeatureStore, load_teacher
from medprep.distill.store import encode
from medprep.manifests.features import DTYPES, decode
from medprep.distill.synthetic import natural_image

ATTRS = {"dtype": "float16", "views": ["identity"], "shard_samples": 4, "encoder": "x"}


def _store(tmp_path, n=10, shape=(8, 4, 4), **attrs):
    keys = [f"k-{i}" for i in range(n)]
    return FeatureStore.create_or_open(str(tmp_path / "s.zarr"), "run", keys, {**ATTRS, **attrs}, lambda: shape)


def _disk_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keep_padding", [False, True])
def test_round_trip(tmp_path, dtype, keep_padding):
    store = _store(tmp_path, dtype=dtype, keep_padding=keep_padding)
    x = torch.randn(10, 8, 4, 4)
    valid = np.array([(3, 4 - i % 2) for i in range(10)], np.int32)  # 3 of 4 rows, every other sample 3 columns
    for s in range(store.nshards):
        sl = store.shard_slice(s)
        store.write_shard(s, {"identity": x[sl]}, valid[sl])
    again = FeatureStore.open(str(tmp_path / "s.zarr"))
    assert again.done_shards() == [True] * 3 and again.keys() == [f"k-{i}" for i in range(10)]
    got = again.read(slice(None))
    masks = np.stack([again.valid_mask(i) for i in range(10)])
    assert masks.sum(axis=(1, 2)).tolist() == [12, 9] * 5
    want = x.numpy() if keep_padding else np.where(masks[:, None], x.numpy(), 0)
    tol = {"float32": 0, "float16": 1e-3, "bfloat16": 8e-3, "int8": 5e-3}[dtype]
    assert got.dtype == np.float32 and got.shape == (10, 8, 4, 4)
    assert np.abs(got - want).max() <= tol * x.abs().max().item()
    assert keep_padding or (got[~np.broadcast_to(masks[:, None], got.shape)] == 0).all()
    assert np.array_equal(again.read(7), got[7])


def test_int8_quality_on_sam_encoder_features():
    teacher = load_teacher("medprep.distill.teachers:random_sam",
                           encoder_kwargs={"img_size": 256, "embed_dim": 64, "depth": 2, "window_size": 7})
    rng = np.random.default_rng(0)
    pre = teacher.preprocess
    batch = [pre.host(natural_image(256, 200, rng)) for _ in range(2)]
    x = pre.device(torch.stack([c for c, _ in batch]), torch.tensor([s for _, s in batch]))
    with torch.inference_mode():
        feats = teacher.encoder(x)
    q, scale = encode(feats, "int8")
    assert q.dtype == np.int8 and scale.dtype == np.float16 and scale.shape == (2, 256)
    back = torch.from_numpy(decode(q, scale, "int8"))
    cos = torch.nn.functional.cosine_similarity(back.flatten(1), feats.flatten(1)).min().item()
    rel_mse = (((back - feats) ** 2).mean() / (feats ** 2).mean()).item()
    assert cos >= 0.999 and rel_mse <= 1e-3, (cos, rel_mse)


MIB = 1 << 20


@pytest.mark.parametrize("dtype, rows, limit", [
    ("float16", 64, 2.0008), ("float16", 48, 1.6), ("float16", 43, 1.45),  # square, 4:3, 3:2 images at 1024
    ("int8", 64, 1.0015), ("int8", 48, 0.80), ("int8", 43, 0.72),  # full grids: raw bytes + metadata
])
def test_bytes_per_sample_follow_the_aspect(tmp_path, dtype, rows, limit):
    """SAM's 256x64x64 grid; an image of aspect 4:3 (3:2) fills 48 (43) rows: with blosc-lz4 the padding costs
    (almost) nothing."""
    store = _store(tmp_path, n=8, shape=(256, 64, 64), dtype=dtype, codec="blosc-lz4")
    for s in range(2):
        store.write_shard(s, {"identity": torch.randn(4, 256, 64, 64)}, np.full((4, 2), (rows, 64), np.int32))
    per_sample = _disk_bytes(tmp_path / "s.zarr") / 8
    assert per_sample <= limit * MIB, per_sample / MIB


@pytest.mark.parametrize("dtype, limit", [("float16", 2.0008), ("int8", 1.0015)])
def test_uncompressed_runs_hold_the_whole_grid(tmp_path, dtype, limit):
    """The default codec (none): every sample holds the whole grid, padding included (2 MiB float16, 1 MiB int8)."""
    store = _store(tmp_path, n=8, shape=(256, 64, 64), dtype=dtype)
    assert store.attrs["codec"] == "none"
    for s in range(2):
        store.write_shard(s, {"identity": torch.randn(4, 256, 64, 64)}, np.full((4, 2), (43, 64), np.int32))
    per_sample = _disk_bytes(tmp_path / "s.zarr") / 8 / MIB
    assert limit - 0.0015 <= per_sample <= limit, per_sample


def test_run_identity_is_checked(tmp_path):
    _store(tmp_path)
    same = _store(tmp_path, checkpoint="/moved/ckpt.pth")  # locations do not matter
    assert same.n == 10
    with pytest.raises(ValueError, match="dtype: store has 'float16', this run 'int8'"):
        _store(tmp_path, dtype="int8")
    with pytest.raises(KeyError, match="no run 'other'"):
        FeatureStore.open(str(tmp_path / "s.zarr"), "other")


def test_interrupted_creation_is_redone(tmp_path):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="a")
    root.create_group("run").create_array("done", shape=(3,), dtype="bool")  # no attrs: creation was killed
    with pytest.raises(ValueError, match="not a finished medprep teacher store"):
        FeatureStore.open(str(tmp_path / "s.zarr"), "run")
    store = _store(tmp_path)
    assert store.n == 10 and store.done_shards() == [False] * 3
