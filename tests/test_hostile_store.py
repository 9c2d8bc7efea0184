"""A teacher store run whose attributes or arrays lie (wrong types, missing, out of range, not the arrays' own shape
or dtype) is refused when opened, by ``info``, ``check-teacher`` and ``preview`` alike, with one error naming the run,
the field, the value and what was expected: never a traceback, never silently wrong data, never exit 0."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from medprep.cli import app
from medprep.distill import CacheExecution, CacheParams, cache_teacher
from medprep.loaders.teacher import TeacherFeatures
from medprep.manifests.features import FeatureReader
from medprep.manifests.runattrs import RunSchemaError
from medprep.prep import build, synthetic

CPU = CacheExecution("cpu")

RUN = "drive"


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A finished store with both views (4 samples, zarr shards of 2) and the dataset it was cached from."""
    tmp = tmp_path_factory.mktemp("hostile-store")
    src = synthetic.make("drive", tmp / "src", n_train=3, n_test=1)
    build("drive", src, tmp / "shards", size=64)
    store = tmp / "t.zarr"
    cache_teacher(CacheParams("random-sam", tmp / "shards" / "drive", store, RUN, encoder_kwargs={"img_size": 64},
                              shard_samples=2, batch_size=2, views=("identity", "hflip")), execution=CPU)
    return store


_DELETE = object()


def _attr(name, value):
    def change(group):
        if value is _DELETE:
            group.attrs.__delitem__(name)
        else:
            group.attrs[name] = value
    return change


def _retype_features(group):
    """The features array re-created as int16 with the same shape: its bits would be read as float16."""
    old = group["features"]
    shape, chunks = old.shape, old.chunks
    del group["features"]
    group.create_array("features", shape=shape, dtype="int16", chunks=chunks, fill_value=0)


def _drop(name):
    def change(group):
        del group[name]
    return change


def _region(name, value):
    def change(group):
        group[name][1] = value
    return change


# (id, change, what the error must say)
ATTR_CASES = [
    ("shard_samples-str", _attr("shard_samples", "4"),
     r"attribute 'shard_samples' is '4', expected a positive integer"),
    ("shard_samples-null", _attr("shard_samples", None), r"'shard_samples' is None, expected a positive integer"),
    ("shard_samples-0", _attr("shard_samples", 0), r"'shard_samples' is 0, expected a positive integer"),
    ("shard_samples--1", _attr("shard_samples", -1), r"'shard_samples' is -1, expected a positive integer"),
    ("shard_samples-missing", _attr("shard_samples", _DELETE), r"'shard_samples' is missing"),
    ("views-null", _attr("views", None), r"'views' is None, expected a list of views"),
    ("views-str", _attr("views", "identity"), r"'views' is 'identity', expected a list of views"),
    ("dtype-unknown", _attr("dtype", "float64"), r"'dtype' is 'float64', expected one of float16, int8"),
    ("feature_shape-other", _attr("feature_shape", [256, 8, 8]),
     r"array 'features' has shape \(4, 256, 4, 4\), expected .*feature_shape \[256, 8, 8\]"),
    ("feature_shape-short", _attr("feature_shape", [256, 4]), r"'feature_shape' is \[256, 4\], expected a list of 3"),
    ("features-int16", _retype_features, r"array 'features' has zarr dtype int16, expected float16"),
    ("features-missing", _drop("features"), r"array 'features' is missing"),
    ("valid_x_hflip-missing", _drop("valid_x_hflip"), r"array 'valid_x_hflip' is missing"),
    ("source-kind", _attr("source", {"kind": "ftp", "url": "x"}), r"'source' is .*expected an object with 'kind'"),
]
REGION_CASES = [
    ("valid_hw-outside", _region("valid_hw", [20, 4]), r"valid_hw of sample .* is \[20, 4\], expected a region "
                                                        r"inside the \d+ x \d+ feature grid"),
    ("valid_x_hflip-reversed", _region("valid_x_hflip", [3, 1]), r"valid_x_hflip of sample .* is \[3, 1\]"),
]


def _copy(cached, tmp_path, change):
    store = tmp_path / "t.zarr"
    shutil.copytree(cached, store)
    change(zarr.open_group(str(store), mode="r+")[RUN])
    return store


@pytest.mark.parametrize("case,change,message", ATTR_CASES, ids=[c[0] for c in ATTR_CASES])
def test_lying_attrs_are_refused_at_open_by_every_command(cached, tmp_path, case, change, message):
    store = _copy(cached, tmp_path, change)
    with pytest.raises(RunSchemaError, match=message) as e:
        FeatureReader.open(str(store), RUN)
    assert f"{store}/{RUN}" in str(e.value) and "rerun 'medprep cache-teacher'" in str(e.value)
    with pytest.raises(RunSchemaError, match=message):
        TeacherFeatures(str(store), RUN)
    runner = CliRunner()
    for args in (["check-teacher", str(store)], ["preview", str(store), "--out", str(tmp_path / "p.png")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "error:" in res.output and f"{RUN}" in res.output, (args, res.output)
        assert "Traceback" not in res.output
    res = runner.invoke(app, ["info", str(store)])  # the card lists the run as unreadable, naming why
    assert res.exit_code == 0 and "cannot be read" in res.output and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("case,change,message", REGION_CASES, ids=[c[0] for c in REGION_CASES])
def test_valid_regions_outside_the_grid_are_damage(cached, tmp_path, case, change, message):
    store = _copy(cached, tmp_path, change)
    view = "hflip" if "hflip" in case else "identity"
    reader = FeatureReader.open(str(store), RUN)
    with pytest.raises(ValueError, match=message):
        reader.valid_mask(1, view)
    res = CliRunner().invoke(app, ["check-teacher", str(store), "--samples", "1"])
    assert res.exit_code == 1 and "damaged" in res.output and "feature grid" in res.output, res.output
    if view == "hflip":
        return  # preview draws the identity view only
    res = CliRunner().invoke(app, ["preview", str(store), "--out", str(tmp_path / "p.png"), "--n", "4"])
    assert res.exit_code == 2 and "feature grid" in res.output and "Traceback" not in res.output, res.output


def test_check_teacher_needs_the_teacher_attrs(cached, tmp_path):
    store = _copy(cached, tmp_path, _attr("encoder", _DELETE))
    FeatureReader.open(str(store), RUN)  # a reader needs no teacher
    res = CliRunner().invoke(app, ["check-teacher", str(store)])
    assert res.exit_code == 2 and "attribute(s) 'encoder' missing, needed to recompute" in res.output, res.output


def test_a_run_without_a_recorded_source_is_not_taken_for_a_dataset(cached, tmp_path):
    """Older runs may record no ``source``: checking a dataset against them says no run was cached from it (one
    ValueError naming the store, the dataset and the command), not a KeyError."""
    from medprep.manifests import BuiltDataset

    store = _copy(cached, tmp_path, _attr("source", _DELETE))
    features = TeacherFeatures(str(store))
    with pytest.raises(ValueError, match=r"no run of teacher store .* \(runs \['drive'\], sources \['not recorded'\]\) "
                                         r"was cached from dataset 'drive'.*medprep cache-teacher --source"):
        features.check_sources([BuiltDataset(cached.parent / "shards" / "drive")])


def test_untouched_store_reads(cached):
    reader = FeatureReader.open(str(cached), RUN)
    assert reader.schema.shard_samples == 2 and np.isfinite(reader.read(0)).all()
