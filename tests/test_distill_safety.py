"""A teacher store is data: a store whose attrs name code (``torch.hub:load`` with a ``hubconf.py`` inside the
store, or any other ``module:callable``) runs nothing in check-teacher, TeacherFeatures or the join."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from medprep.cli import app
from medprep.distill import CacheExecution, CacheParams, cache_teacher, load_teacher
from medprep.distill.check import check_teacher
from medprep.loaders.teacher import TeacherFeatures, teacher_shards
from medprep.prep import build, synthetic

CPU = CacheExecution("cpu")

pytestmark = pytest.mark.filterwarnings("ignore:Object at hub is not recognized")

HUBCONF = """\
import pathlib
pathlib.Path({marker!r}).write_text("code from a teacher store ran")
dependencies = []


def teacher(**kwargs):
    raise RuntimeError("the bait was called")
"""


def _bait(store, run: str, marker, encoder: str, kwargs: dict) -> None:
    """Rewrite run ``run`` of ``store`` so that its attrs name ``encoder``; a hubconf.py inside the store would
    write ``marker`` when imported."""
    hub = store / "hub"
    hub.mkdir(exist_ok=True)
    (hub / "hubconf.py").write_text(HUBCONF.format(marker=str(marker)))
    group = zarr.open_group(str(store), mode="r+")[run]
    group.attrs.update({"encoder": encoder, "encoder_kwargs": kwargs})


@pytest.fixture()
def crafted(tmp_path):
    src = synthetic.make("drive", tmp_path / "src", n_train=3, n_test=1)
    build("drive", src, tmp_path / "shards", size=64)
    store = tmp_path / "t.zarr"
    params = CacheParams("random-sam", tmp_path / "shards" / "drive", store, "drive", encoder_kwargs={"img_size": 64},
                         shard_samples=2, batch_size=2)
    cache_teacher(params, execution=CPU)
    marker = tmp_path / "MARKER"
    hub = {"repo_or_dir": str(store / "hub"), "model": "teacher", "source": "local", "trust_repo": True}
    _bait(store, "drive", marker, "torch.hub:load", hub)
    return store, tmp_path / "shards" / "drive", marker, hub


@pytest.mark.parametrize("encoder, kwargs", [
    ("torch.hub:load", None),  # the fixture's: imports the store's hubconf.py
    ("subprocess:run", {"args": ["touch", "MARKER"]}),
    ("os:system", {"command": "touch MARKER"}),
])
def test_a_store_never_chooses_code(crafted, encoder, kwargs, monkeypatch):
    store, shards, marker, hub = crafted
    monkeypatch.chdir(marker.parent)  # where the other callables would touch MARKER
    _bait(store, "drive", marker, encoder, hub if kwargs is None else kwargs)
    res = CliRunner().invoke(app, ["check-teacher", str(store), "-k", "2"])
    assert res.exit_code == 2 and "which is code" in res.output and f"--encoder {encoder}" in res.output, res.output
    with pytest.raises(ValueError, match="never imports code because a store names it"):
        check_teacher(str(store), samples=2)
    with pytest.raises(ValueError, match="was cached with --encoder"):
        check_teacher(str(store), samples=2, encoder="random-sam")  # no built-in stand-in for the named code
    assert CliRunner().invoke(app, ["info", str(store)]).exit_code == 0  # the store's card: attrs shown, not run
    features = TeacherFeatures(str(store))
    joined = list(teacher_shards(str(shards), str(store), split="train", fields=("image", "key")))
    assert joined and all(np.array_equal(s["teacher"].numpy(), features.get(s["key"])) for s in joined)
    assert not marker.exists()


def test_the_bait_is_real(crafted):
    """Control: the crafted store's code does run when the caller names it on purpose (so the test above would
    see it run)."""
    store, _, marker, hub = crafted
    with pytest.raises(Exception, match="the bait was called"):
        load_teacher("torch.hub:load", encoder_kwargs=hub)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(Exception, match="the bait was called"):  # check-teacher with the same string, explicitly
        check_teacher(str(store), samples=1, encoder="torch.hub:load")
    assert marker.exists()
