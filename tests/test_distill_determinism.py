"""The determinism contract of CPU feature caches (README, "Determinism of teacher features"): bit-identical for the
same device kind, batch size and intra-op thread count (recorded in the run's attrs and used by every writer of the
run); otherwise within one float16 step at the magnitude of each sample's largest feature."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from medprep.distill import CacheExecution, CacheParams, FeatureStore, cache_teacher
from medprep.distill.synthetic import write_sa1b_tar

CPU = CacheExecution("cpu")


@pytest.fixture(scope="module")
def sa1b(tmp_path_factory):
    root = tmp_path_factory.mktemp("sa1b")
    sizes = [(48, 64), (64, 30), (64, 64), (20, 64), (33, 17), (64, 50), (50, 64)]
    write_sa1b_tar(root / "sa_000000.tar", list(range(1, 8)), np.random.default_rng(0), sizes=sizes)
    return root


def _features(out) -> np.ndarray:
    return zarr.open_group(str(out), mode="r")["r"]["features"][:]


def _params(sa1b, out, **kw) -> CacheParams:
    return CacheParams("random-sam", sa1b, out, "r", encoder_kwargs={"img_size": 64}, shard_samples=4,
                       **kw)


def within_one_step(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two float16 feature arrays ``(N, C, H, W)`` differ by at most one float16 step at the magnitude of
    each sample's largest feature (float32 rounding is relative to the operands, so a value near 0 may move by more
    than its own step)."""
    top = np.maximum(np.abs(a), np.abs(b)).reshape(len(a), -1).max(axis=1).astype(np.float16)
    step = np.spacing(top).astype(np.float32)[:, None, None, None]
    return bool((np.abs(a.astype(np.float32) - b.astype(np.float32)) <= step).all())


def test_same_threads_and_batch_size_are_bit_identical_whatever_the_process_count(tmp_path, sa1b):
    a = cache_teacher(_params(sa1b, tmp_path / "a.zarr", threads=2, batch_size=2), execution=CPU).store
    assert (a.attrs["cpu_threads"], a.attrs["batch_size"], a.attrs["attention"]) == (2, 2, "reference")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # this process's count does not matter: the run's does
    try:
        cache_teacher(_params(sa1b, tmp_path / "b.zarr", threads=2, batch_size=2), execution=CPU)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before  # restored after the run
    assert np.array_equal(_features(tmp_path / "a.zarr"), _features(tmp_path / "b.zarr"))


def test_other_thread_counts_and_batch_sizes_agree_within_one_float16_step(tmp_path, sa1b):
    base = _features(cache_teacher(_params(sa1b, tmp_path / "a.zarr", threads=2, batch_size=2),
                                   execution=CPU).store.url)
    for name, kw in (("t1", {"threads": 1, "batch_size": 2}), ("b4", {"threads": 2, "batch_size": 4})):
        other = _features(cache_teacher(_params(sa1b, tmp_path / f"{name}.zarr", **kw), execution=CPU).store.url)
        assert within_one_step(base, other), name


def test_a_resumed_run_keeps_its_recorded_batch_size_and_threads(tmp_path, sa1b):
    params = _params(sa1b, tmp_path / "t.zarr", threads=1, batch_size=2)
    cache_teacher(params, shards=[0], execution=CPU)
    resumed = cache_teacher(replace(params, threads=None, batch_size=None), execution=CPU)  # the recorded ones
    assert resumed.shards_written == [1] and resumed.store.attrs["cpu_threads"] == 1
    whole = cache_teacher(replace(params, out=str(tmp_path / "whole.zarr")), execution=CPU)
    assert np.array_equal(_features(tmp_path / "t.zarr"), _features(whole.store.url))
    for other in ({"threads": 2}, {"batch_size": 4}):
        with pytest.raises(ValueError, match="cached with other parameters"):
            cache_teacher(replace(params, **other), execution=CPU)
    assert FeatureStore.open(str(tmp_path / "t.zarr")).done_shards() == [True, True]
