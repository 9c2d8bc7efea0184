"""The cache pipeline end to end: views, valid regions, determinism across partitions, check-teacher, CLI."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from medprep.cli import app
from medprep.distill import CacheExecution, CacheParams, FeatureStore, SA1BSource, cache_teacher
from medprep.distill.check import check_teacher
from medprep.distill.pipeline import region_cells
from medprep.distill.preprocess import Preprocess
from medprep.distill.synthetic import write_sa1b_tar

CPU = CacheExecution("cpu")

TINY = "random-sam"
KW = {"img_size": 64}


def _params(source, out, **kw) -> CacheParams:
    """The tiny random teacher over ``source`` into run ``r`` of ``out`` (run on the CPU: ``execution=CPU``)."""
    return CacheParams(TINY, source, out, "r", encoder_kwargs=KW, **kw)


@pytest.fixture(scope="module")
def sa1b(tmp_path_factory):
    root = tmp_path_factory.mktemp("sa1b")
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (64, 30), (64, 64), (20, 64), (33, 17), (64, 50), (50, 64)]
    write_sa1b_tar(root / "sa_000000.tar", list(range(1, 8)), rng, sizes=sizes)
    return root


def _arrays(url: str, run: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(url, mode="r")[run]
    return {name: a[:] for name, a in g.arrays()}


def test_hflip_view_is_the_flipped_image(tmp_path, sa1b):
    params = _params(sa1b, tmp_path / "t.zarr", dtype="float32", views=("identity", "hflip"), shard_samples=3,
                     batch_size=2)
    cache_teacher(params, execution=CPU)
    teacher, src, out = params.teacher(), SA1BSource(str(sa1b)), params.out
    store = FeatureStore.open(out, "r")
    pre = teacher.preprocess
    for i in range(src.keys.__len__()):
        image, _ = src.load(i)
        canvas, size = pre.host(np.ascontiguousarray(image[:, ::-1]))
        with torch.inference_mode():
            ref = teacher.encoder(pre.device(canvas[None], torch.tensor([size])))[0].numpy()
        assert np.abs(store.read(i, "hflip") - np.where(store.valid_mask(i, "hflip"), ref, 0)).max() <= 1e-5
        # SAM pads bottom/right after the flip, so the flipped view's content also starts at column 0
        assert np.array_equal(store.valid_mask(i, "hflip"), store.valid_mask(i))
    assert not np.array_equal(store.read(0, "hflip"), store.read(0))


def _cells(hw: tuple[int, int], valid: tuple[int, int] | None, flipped: bool) -> tuple[int, tuple[int, int]]:
    """Valid cells of an ``hw`` image with valid pixels ``valid``, placed for a teacher of input 64, stride 16."""
    _, region = Preprocess(64).place(np.zeros((*hw, 3), np.uint8), valid, flipped)
    return region_cells(region, 16)


def test_valid_cells_of_padded_sources():
    # a 128x128 medical image whose content is the top-left 100x60 (longest-side build), teacher input 64
    assert _cells((128, 128), (100, 60), flipped=False) == (4, (0, 2))
    # flipped: the content moves to the right: pixels [34, 64) of the teacher input -> cells [2, 4)
    assert _cells((128, 128), (100, 60), flipped=True) == (4, (2, 4))
    # SA-1B style: no padding in the source; SAM pads the 64x43 resized image itself
    assert _cells((90, 60), None, flipped=False) == (4, (0, 3))
    assert _cells((90, 60), None, flipped=True) == (4, (0, 3))


def test_same_arrays_whatever_the_partition(tmp_path, sa1b):
    kw = dict(dtype="int8", views=("identity", "hflip"), shard_samples=2, batch_size=2)
    whole = cache_teacher(_params(sa1b, tmp_path / "a.zarr", **kw), execution=CPU)
    assert whole.shards_written == [0, 1, 2, 3] and whole.images == 14
    first = cache_teacher(_params(sa1b, tmp_path / "b.zarr", **kw), shards=[3, 1],
                          execution=CacheExecution("cpu", decode_threads=1))
    assert first.shards_written == [3, 1]
    assert FeatureStore.open(str(tmp_path / "b.zarr")).done_shards() == [False, True, False, True]
    rest = cache_teacher(_params(sa1b, tmp_path / "b.zarr", **kw), execution=CPU)
    assert rest.shards_written == [0, 2] and rest.shards_skipped == [1, 3]
    a, b = _arrays(str(tmp_path / "a.zarr"), "r"), _arrays(str(tmp_path / "b.zarr"), "r")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    attrs = FeatureStore.open(str(tmp_path / "a.zarr")).attrs
    for key in ("encoder", "checkpoint_sha256", "input_size", "resize", "pixel_mean", "pixel_std", "autocast",
                "source_manifest_sha256", "medprep_version", "views", "dtype"):
        assert key in attrs
    with pytest.raises(ValueError, match="cached with other parameters"):
        cache_teacher(_params(sa1b, tmp_path / "a.zarr", **{**kw, "views": ("identity",)}), execution=CPU)


def test_check_teacher_and_cli(tmp_path, sa1b):
    out = str(tmp_path / "t.zarr")
    runner = CliRunner()
    args = ["cache-teacher", "--source", str(sa1b), "--out", out, "--encoder", TINY, "--encoder-arg", "img_size=64",
            "--device", "cpu", "--dtype", "int8", "--shard-samples", "4", "--batch-size", "2", "--run", "r"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 zarr shards written (7 images)" in res.output
    assert "cache r: 7/7 images (100%)" in res.stderr  # progress in images, a plain line without a terminal
    res = runner.invoke(app, args)  # all done: nothing to encode, the resumed images shown apart
    assert res.exit_code == 0 and "0 zarr shards written" in res.output and "7 resumed" in res.stderr
    report = check_teacher(out, samples=3)
    assert len(report.keys) == 3 and report.cosine_min >= 0.999 and report.max_abs < 0.05
    res = runner.invoke(app, ["check-teacher", out, "-k", "2"])
    assert res.exit_code == 0 and "2 samples checked" in res.output, res.output
    g = zarr.open_group(out, mode="r+")["r"]
    g["features"][5] = np.flip(g["features"][5], axis=-1)  # a corrupted sample is caught
    res = runner.invoke(app, ["check-teacher", out, "-k", "7", "--source", str(sa1b)])
    assert res.exit_code == 1 and "7 samples checked" in res.output, res.output
    res = runner.invoke(app, ["cache-teacher", "--source", str(sa1b), "--out", out, "--encoder", "vit_h",
                              "--device", "cpu"])
    assert res.exit_code == 2 and "needs --checkpoint" in res.output


def test_dask_workers_one_per_device(tmp_path, sa1b):
    one = _params(sa1b, tmp_path / "one.zarr", views=("identity", "hflip"), shard_samples=2, batch_size=2)
    cache_teacher(one, execution=CacheExecution("cpu", decode_threads=1))
    two = replace(one, out=str(tmp_path / "two.zarr"))
    on_two_devices = CacheExecution(devices=("cpu", "cpu"), decode_threads=1)
    assert cache_teacher(two, execution=on_two_devices).shards_written == [0, 1, 2, 3]
    a, b = _arrays(one.out, "r"), _arrays(two.out, "r")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert cache_teacher(two, execution=on_two_devices).shards_written == []  # all done: nothing to resume


def test_unreadable_input_names_its_key_and_the_run_resumes(tmp_path):
    from medprep.distill.synthetic import write_image_folder

    root = write_image_folder(tmp_path / "imgs", 4, np.random.default_rng(0))
    good = (root / "img_003.png").read_bytes()
    (root / "img_003.png").write_bytes(b"not a png")
    kw = dict(shard_samples=2, batch_size=2)
    with pytest.raises(RuntimeError, match="cannot read sample 'imgs-img_003'"):
        cache_teacher(_params(root, tmp_path / "t.zarr", **kw), execution=CacheExecution("cpu", decode_threads=1))
    assert FeatureStore.open(str(tmp_path / "t.zarr")).done_shards() == [True, False]
    (root / "img_003.png").write_bytes(good)
    res = cache_teacher(_params(root, tmp_path / "t.zarr", **kw), execution=CPU)
    assert res.shards_written == [1] and res.shards_skipped == [0]


def test_fsspec_store_urls(tmp_path, sa1b):
    for url in (f"memory://{tmp_path.name}/t.zarr", f"file://{tmp_path}/t.zarr"):
        cache_teacher(_params(sa1b, url, shard_samples=4, batch_size=4), execution=CPU)
        store = FeatureStore.open(url)
        assert store.done_shards() == [True, True] and store.read(6).shape == (256, 4, 4)
