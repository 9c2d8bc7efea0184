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

ATTRS = {"dtype": "float16", "views": ["identity"], "shard_size": 4, "encoder": "x"}


def _store(tmp_path, n=10, shape=(8, 4, 4), **attrs):
    keys = [f"k-{i}" for i in range(n)]
    return FeatureStore.create_or_open(str(tmp_path / "s.zarr"), "run", keys, {**ATTRS, **attrs}, lambda: shape)


def _disk_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path, dtype):
    store = _store(tmp_path, dtype=dtype)
    x = torch.randn(10, 8, 4, 4)
    for s in range(store.nshards):
        sl = store.shard_slice(s)
        store.write_shard(s, {"identity": x[sl]}, np.full((sl.stop - sl.start, 2), 3, np.int32))
    again = FeatureStore.open(str(tmp_path / "s.zarr"))
    assert again.done_shards() == [True] * 3 and again.keys() == [f"k-{i}" for i in range(10)]
    got = again.read(slice(None))
    tol = {"float32": 0, "float16": 1e-3, "bfloat16": 8e-3, "int8": 5e-3}[dtype]
    assert got.dtype == np.float32 and got.shape == (10, 8, 4, 4)
    assert np.abs(got - x.numpy()).max() <= tol * x.abs().max().item()
    assert np.array_equal(again.read(7), got[7])
    assert again.valid_mask(2).sum() == 9


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


@pytest.mark.parametrize("dtype, limit", [("float16", (2 << 20) * 1.01), ("int8", 1.05 * (1 << 20))])
def test_bytes_per_sample(tmp_path, dtype, limit):
    store = _store(tmp_path, n=8, shape=(256, 64, 64), dtype=dtype)
    for s in range(2):
        store.write_shard(s, {"identity": torch.randn(4, 256, 64, 64)}, np.zeros((4, 2), np.int32))
    per_sample = _disk_bytes(tmp_path / "s.zarr") / 8
    assert per_sample <= limit
    assert per_sample >= {"float16": 2 << 20, "int8": 1 << 20}[dtype]


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
