"""The teacher store format read without medprep (zarr-python, tensorstore, the README's example), and damage:
checksums, missing chunks, NaN/Inf, old formats."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import torch
import zarr
from PIL import Image
from typer.testing import CliRunner

from medprep.cli import app
from medprep.distill import CacheExecution, CacheParams, FeatureStore, cache_teacher
from medprep.distill.synthetic import natural_image
from medprep.loaders.teacher import TeacherFeatures
from medprep.manifests.features import FORMAT, DamagedStore, FeatureReader

CPU = CacheExecution("cpu")

TINY = "random-sam"
README = Path(__file__).resolve().parents[1] / "README.md"
#: square, 4:3, 3:2, portrait
SHAPES = [(64, 64), (48, 64), (43, 64), (64, 40), (60, 90), (64, 64)]
DTYPES = ("int8", "float16", "bfloat16")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One store, one run per dtype (both views), over images of several aspects; the tiny teacher at 64."""
    root = tmp_path_factory.mktemp("fmt")
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir()
    for i, (h, w) in enumerate(SHAPES):
        Image.fromarray(natural_image(h, w, rng)).save(root / "imgs" / f"im{i}.png")
    for dtype in DTYPES:
        cache_teacher(CacheParams(TINY, root / "imgs", root / "t.zarr", dtype, encoder_kwargs={"img_size": 64},
                                  dtype=dtype, views=("identity", "hflip"), shard_samples=4, batch_size=2),
                      execution=CPU)
    return str(root / "t.zarr")


def _copy(store: str, tmp_path: Path) -> str:
    return str(shutil.copytree(store, tmp_path / "copy.zarr"))


def _decode(arrays: dict[str, np.ndarray], dtype: str, sfx: str) -> np.ndarray:
    """Decode features the way the arrays' attrs say, with numpy only."""
    f = arrays[f"features{sfx}"]
    if dtype == "int8":
        return f.astype(np.float32) * arrays[f"scale{sfx}"].astype(np.float32)[..., None, None]
    if dtype == "bfloat16":
        return (f.astype(np.uint32) << 16).view(np.float32)
    return f.astype(np.float32)


def _expected(store: str, run: str) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    feats = TeacherFeatures(store, run)
    keys = feats.keys()
    want = {view: np.stack([feats.get(k, view) for k in keys]) for view in feats.views}
    masks = np.stack([feats.valid_mask(k) for k in keys])
    return keys, want, masks


@pytest.mark.parametrize("dtype", DTYPES)
def test_zarr_python_and_tensorstore_read_the_same_tensors(store, dtype):
    keys, want, masks = _expected(store, dtype)
    names = [n for n, _ in zarr.open_group(store, mode="r")[dtype].arrays()]
    assert sorted(names) == sorted(["features", "features_hflip", "keys", "valid_hw", "valid_x_hflip", "done"]
                                   + (["scale", "scale_hflip"] if dtype == "int8" else []))
    by_zarr = {n: a[:] for n, a in zarr.open_group(store, mode="r")[dtype].arrays()}
    by_ts = {n: ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{store}/{dtype}/{n}"}}).result()
             .read().result() for n in names}
    for arrays in (by_zarr, by_ts):
        assert [bytes(k).rstrip(b"\0").decode() for k in arrays["keys"]] == keys  # the attrs' "decode"
        assert arrays["done"].all()
        for view, sfx in (("identity", ""), ("hflip", "_hflip")):
            assert np.array_equal(_decode(arrays, dtype, sfx), want[view])
        rows, cols = arrays["valid_hw"].T
        got = np.arange(4)[None, :, None] < rows[:, None, None]
        assert np.array_equal(got & (np.arange(4)[None, None, :] < cols[:, None, None]), masks)
    # padding is stored as 0; 4:3 and 3:2 images fill 3 of the 4 rows of cells, the portrait one 3 of 4 columns
    assert (rows.tolist(), cols.tolist()) == ([4, 3, 3, 4, 3, 4], [4, 4, 4, 3, 4, 4])
    assert not want["identity"][~np.broadcast_to(masks[:, None], want["identity"].shape)].any()


def test_every_array_says_how_to_decode_it(store):
    for dtype in DTYPES:
        group = zarr.open_group(store, mode="r")[dtype]
        assert group.attrs["format"] == FORMAT and group.attrs["codec"] == "none"
        for name, array in group.arrays():
            assert array.attrs["logical_dtype"], name
            codecs = array.metadata.to_dict()["codecs"]
            if codecs[0]["name"] == "sharding_indexed":
                codecs = codecs[0]["configuration"]["codecs"]
            assert [c["name"] for c in codecs] == ["bytes", "crc32c"], name  # the default --codec
        f = group["features"].attrs
        assert f["logical_dtype"] == dtype and f["stored_as"] == {"int8": "int8", "float16": "float16",
                                                                   "bfloat16": "uint16"}[dtype]
        assert "valid region" in f["padding"] and "fill value" in f["missing"]
    root = zarr.open_group(store, mode="r")
    assert "<< 16" in root["bfloat16"]["features"].attrs["decode"]
    assert "float32(features) * float32(scale)" in root["int8"]["scale_hflip"].attrs["decode"]
    assert root["bfloat16"]["keys"].attrs["decode"] == "bytes(row).rstrip(b'\\x00').decode('utf-8')"


def test_readme_example_reads_the_store(store):
    """The README's "Reading a teacher store without medprep" example, run on a store of each dtype."""
    text = README.read_text()
    section = text[text.index("### Reading a teacher store without medprep"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for dtype in DTYPES:
        keys, want, masks = _expected(store, dtype)
        scope: dict = {}
        exec(code.replace("teacher.zarr", store).replace("vit_h-drive", dtype).replace("drive-21_training", keys[2]),
             scope)
        assert np.array_equal(scope["x"], want["identity"][2])
        assert (int(scope["rows"]), int(scope["cols"])) == (3, 4)


def _chunk_extent(shard_file: Path, j: int, chunks: int) -> tuple[int, int]:
    """Offset and size of inner chunk ``j`` of a zarr shard file of ``chunks`` inner chunks (the index at its end:
    an (offset, nbytes) uint64 pair per chunk, then a crc32c)."""
    raw = shard_file.read_bytes()
    offset, size = np.frombuffer(raw, "<u8", count=2, offset=len(raw) - 16 * chunks - 4 + 16 * j)
    return int(offset), int(size)


def test_flipped_bytes_are_detected_and_name_the_key(store, tmp_path):
    url = _copy(store, tmp_path)
    shard = Path(url) / "float16" / "features" / "c" / "0" / "0" / "0" / "0"  # samples 0-3
    offset, size = _chunk_extent(shard, 1, 4)
    raw = bytearray(shard.read_bytes())
    raw[offset + size // 2] ^= 0xFF
    raw[offset + size // 2 + 1] ^= 0xFF  # two flipped bytes inside sample 1's chunk
    shard.write_bytes(bytes(raw))
    feats = TeacherFeatures(url, "float16")
    key = feats.keys()[1]
    with pytest.raises(DamagedStore, match=rf"sample '{key}' \(row 1\) of teacher store .*run 'float16'.*cannot be "
                                           r"read.*checksum"):
        feats.get(key)
    assert np.isfinite(feats.get(feats.keys()[0])).all()  # the shard's other samples still read
    with pytest.raises(DamagedStore, match=f"sample '{key}'"):
        FeatureReader.open(url, "float16").read(slice(0, 4))
    res = CliRunner().invoke(app, ["check-teacher", url, "--run", "float16", "-k", "1"])
    assert res.exit_code == 1 and key in res.output and "checksum" in res.output, res.output


def test_missing_chunk_of_a_done_sample_is_an_error(store, tmp_path):
    url = _copy(store, tmp_path)
    (Path(url) / "int8" / "features" / "c" / "1" / "0" / "0" / "0").unlink()  # the shard of samples 4-5
    feats = TeacherFeatures(url, "int8")
    key = feats.keys()[4]
    with pytest.raises(DamagedStore, match=rf"sample '{key}' .*run 'int8'.*marked done but its chunk is missing"):
        feats.get(key)
    reader = FeatureReader.open(url, "int8")
    assert [i for i, _ in reader.problems(slice(None))] == [4, 5]
    res = CliRunner().invoke(app, ["check-teacher", url, "--run", "int8", "-k", "1"])
    assert res.exit_code == 1 and key in res.output and "missing" in res.output, res.output


def test_nan_features_are_reported(store, tmp_path):
    url = _copy(store, tmp_path)
    g = zarr.open_group(url, mode="r+")["bfloat16"]
    bits = g["features"][3]
    bits[0, 0, 0] = 0x7F80  # +Inf
    bits[5, 1, 1] = 0x7FC1  # a NaN
    g["features"][3] = bits  # written through zarr: the checksum matches, the values are bad
    feats = TeacherFeatures(url, "bfloat16")
    key = feats.keys()[3]
    with pytest.raises(DamagedStore, match=rf"sample '{key}' .*run 'bfloat16'.*NaN or Inf"):
        feats.get(key)
    res = CliRunner().invoke(app, ["check-teacher", url, "--run", "bfloat16", "-k", "1"])
    assert res.exit_code == 1 and key in res.output and "NaN" in res.output, res.output


def test_writer_refuses_nan_and_float16_overflow(tmp_path):
    attrs = {"dtype": "float16", "views": ["identity"], "shard_samples": 2, "encoder": "x"}
    store = FeatureStore.create_or_open(str(tmp_path / "s.zarr"), "r", ["a", "b"], attrs, lambda: (2, 2, 2))
    x = torch.zeros(2, 2, 2, 2)
    x[1, 0, 0, 0] = 1e5  # beyond float16
    with pytest.raises(ValueError, match=r"\['b'\] .* NaN or Inf as float16.*need --dtype bfloat16"):
        store.write_shard(0, {"identity": x}, np.full((2, 2), 2, np.int32))
    assert not store.done().any()


def test_run_written_before_the_shard_samples_rename_is_read_and_resumed(tmp_path):
    """A run whose attrs name its samples per zarr shard ``shard_size`` (medprep before the rename to
    ``shard_samples``) is read, and resumed, as ``shard_samples``."""
    url = str(tmp_path / "s.zarr")
    attrs = {"dtype": "float16", "views": ["identity"], "shard_samples": 2, "encoder": "x"}
    FeatureStore.create_or_open(url, "r", ["a", "b", "c"], attrs, lambda: (2, 2, 2))
    group = zarr.open_group(url, mode="a")["r"]
    shard_samples = group.attrs["shard_samples"]
    del group.attrs["shard_samples"]
    group.attrs["shard_size"] = shard_samples
    assert "shard_samples" not in zarr.open_group(url, mode="r")["r"].attrs
    reader = FeatureReader.open(url, "r")
    assert reader.shard_samples == 2 and reader.nshards == 2 and reader.attrs["shard_samples"] == 2
    again = FeatureStore.create_or_open(url, "r", ["a", "b", "c"], attrs, lambda: (2, 2, 2))  # not refused
    again.write_shard(1, {"identity": torch.ones(1, 2, 2, 2)}, np.full((1, 2), 2, np.int32))
    assert again.done().tolist() == [False, False, True]


def _v1_store(url: str) -> None:
    """A store as medprep-teacher-v1 wrote it: string keys, uncompressed features, fill value 0."""
    g = zarr.open_group(url, mode="a").create_group("old")
    x = np.arange(3 * 2 * 2 * 2, dtype=np.float16).reshape(3, 2, 2, 2)
    g.create_array("features", shape=x.shape, dtype="float16", chunks=(1, 2, 2, 2), shards=(2, 2, 2, 2),
                   compressors=None, fill_value=0)[:] = x
    g.create_array("valid_hw", shape=(3, 2), dtype="int32", chunks=(2, 2), fill_value=0)[:] = 2
    g.create_array("done", shape=(3,), dtype="bool", chunks=(2,), fill_value=False)[:] = True
    g.create_array("keys", shape=(3,), dtype=str, chunks=(3,))[:] = np.asarray(["a", "b", "c"])
    g.attrs.update({"dtype": "float16", "views": ["identity"], "shard_size": 2, "encoder": "x",
                    "feature_shape": [2, 2, 2], "format": "medprep-teacher-v1"})


def test_v1_store_is_read_but_never_written(tmp_path):
    url = str(tmp_path / "s.zarr")
    _v1_store(url)
    feats = TeacherFeatures(url, "old")
    assert feats.keys() == ["a", "b", "c"]
    assert np.array_equal(feats.get("c"), np.arange(16, 24, dtype=np.float32).reshape(2, 2, 2))
    attrs = {"dtype": "float16", "views": ["identity"], "shard_samples": 2, "encoder": "x"}
    with pytest.raises(ValueError, match=r"store format 'medprep-teacher-v1'; this medprep writes "
                                         r"'medprep-teacher-v2' .*new --run or a new store"):
        FeatureStore.create_or_open(url, "old", ["a", "b", "c"], attrs, lambda: (2, 2, 2))
    zarr.open_group(url, mode="a")["old"].attrs["format"] = "medprep-teacher-v9"
    with pytest.raises(ValueError, match="format 'medprep-teacher-v9'"):
        TeacherFeatures(url, "old")
