"""Many datasets, one corpus: several sources cached into one store (a run each), joined by key with a MedShards mix;
ambiguous and missing keys, rebuilt datasets and per-run views refused or handled; the SA-1B image stream."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from medprep.cli import app
from medprep.distill import CacheExecution, CacheParams, cache_corpus, cache_teacher, per_source, source_specs
from medprep.distill.demo import cache_demo
from medprep.distill.synthetic import write_sa1b_tar
from medprep.loaders import collate
from medprep.loaders.teacher import SA1BStream, TeacherFeatures, TeacherJoin, student_image, teacher_shards
from medprep.manifests import open_dataset
from medprep.manifests.features import FeatureReader, runs
from medprep.prep import build, synthetic

CPU = CacheExecution("cpu")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_student.py"
FIELDS = ("image", "mask", "patch16", "key")
KW = {"img_size": 64}


def _params(source, out, run=None, **kw) -> CacheParams:
    return CacheParams("random-sam", source, out, run, encoder_kwargs=KW, shard_samples=4, batch_size=2,
                       **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """drive + dsb2018 built at 64, cached by the demo's cache step into one store (runs random-sam-<dataset>)."""
    root = tmp_path_factory.mktemp("corpus")
    shards = root / "shards"
    build("drive", synthetic.make("drive", root / "src-drive", n_train=5, n_test=2), shards, size=64)
    build("dsb2018", synthetic.make("dsb2018", root / "src-dsb", n=10), shards, size=64)
    store = root / "teacher.zarr"
    cache_demo(shards, store, size=64)
    return shards / "drive", shards / "dsb2018", str(store)


def test_two_dataset_demo_distillation(corpus):
    """examples/train_student.py --teacher STORE over drive + dsb2018 (all the store's runs), and the joined
    teacher tensor of every key equals the stored one."""
    drive, dsb, store = corpus
    assert runs(store) == ["random-sam-drive", "random-sam-dsb2018"]
    history = runpy.run_path(str(EXAMPLE))["main"](
        ["--shards", str(drive), str(dsb), "--teacher", store, "--steps", "4", "--batch-size", "2"])
    assert len(history) == 4 and all(np.isfinite(h["distill"]) for h in history)
    joined = list(teacher_shards([str(drive), str(dsb)], store, split="train", fields=FIELDS, shuffle=False))
    assert {s["key"].split("-")[0] for s in joined} == {"drive", "dsb2018"}
    for s in joined:
        run = f"random-sam-{s['key'].split('-')[0]}"
        reader = FeatureReader.open(store, run)
        row = reader.keys().index(s["key"])
        stored = zarr.open_group(store, mode="r")[run]  # the raw arrays: int8 codes times the per-channel scale
        expected = stored["features"][row].astype(np.float32) * stored["scale"][row].astype(np.float32)[:, None, None]
        assert torch.equal(s["teacher"], torch.from_numpy(expected))
        assert np.array_equal(s["teacher"].numpy(), reader.read(row))
    batch = collate(joined[:4])
    assert batch["teacher"].shape == (4, 256, 4, 4) and batch["teacher_valid"].dtype == torch.bool


def test_cli_caches_several_sources_into_one_store(corpus, tmp_path):
    drive, dsb, store = corpus
    out = str(tmp_path / "t.zarr")
    args = ["cache-teacher", "--out", out, "--encoder", "random-sam", "--encoder-arg", "img_size=64", "--dtype",
            "int8", "--shard-samples", "8", "--batch-size", "8", "--device", "cpu"]
    res = CliRunner().invoke(app, args + ["--source", f"{drive},{dsb}"])
    assert res.exit_code == 0, res.output
    assert f"{out}/random-sam-drive: 1 zarr shards written" in res.output
    assert f"{out}/random-sam-dsb2018: 2 zarr shards written" in res.output
    for run in runs(store):  # the same arrays as the demo's cache step
        a, b = zarr.open_group(store, mode="r")[run], zarr.open_group(out, mode="r")[run]
        assert all(np.array_equal(a[name][:], b[name][:]) for name, _ in a.arrays())
    res = CliRunner().invoke(app, args + ["--source", str(drive), "--source", str(dsb)])  # repeated: resumes
    assert res.exit_code == 0 and res.output.count("0 zarr shards written") == 2, res.output
    res = CliRunner().invoke(app, args + ["--source", f"{drive},{dsb}", "--run", "x"])
    assert res.exit_code == 2 and "names one run, but 2 sources" in res.output


def test_source_options_go_to_the_sources_they_apply_to(corpus, tmp_path):
    drive, dsb, _ = corpus
    sa1b = tmp_path / "sa1b"
    write_sa1b_tar(sa1b / "sa_000000.tar", [1, 2, 3], np.random.default_rng(0))
    specs = source_specs([str(sa1b), str(drive)], fraction=0.5, split="train")
    assert (specs[0].kind, specs[0].fraction, specs[0].split) == ("sa1b", 0.5, None)
    assert (specs[1].kind, specs[1].fraction, specs[1].split) == ("medical", None, "train")
    with pytest.raises(ValueError, match="applies to sa1b sources, but none"):
        source_specs([str(drive), str(dsb)], fraction=0.5)
    twin = tmp_path / "copy" / "drive"
    shutil.copytree(drive, twin)
    with pytest.raises(ValueError, match="would both be cached as run 'random-sam-drive'"):
        per_source("random-sam", [str(drive), str(twin)], tmp_path / "t.zarr")


def test_ambiguous_missing_and_mixed_teacher_runs_are_refused(corpus, tmp_path):
    drive, dsb, _ = corpus
    twice = str(tmp_path / "twice.zarr")
    cache_corpus([_params(drive, twice, "a"), _params(drive, twice, "b")], execution=CPU)
    with pytest.raises(ValueError, match=r"more than one run .* in \['a', 'b'\]"):
        TeacherFeatures(twice)
    assert len(TeacherFeatures(twice, "a")) == len(TeacherFeatures(twice, ["b"])) == 7
    with pytest.raises(ValueError, match="no run of teacher store .* dataset 'dsb2018'"):
        teacher_shards([str(drive), str(dsb)], twice, run="a")
    with pytest.raises(KeyError, match="not in teacher store"):
        list(TeacherJoin([{"key": "drive-nope"}], TeacherFeatures(twice, "a")))
    mixed = str(tmp_path / "mixed.zarr")
    cache_teacher(_params(drive, mixed), execution=CPU)
    cache_teacher(CacheParams("random-sam", dsb, mixed, encoder_kwargs={**KW, "seed": 1}), execution=CPU)
    with pytest.raises(ValueError, match="2 different teachers"):
        TeacherFeatures(mixed)


def test_join_refuses_another_build_of_a_dataset(corpus, tmp_path):
    drive, _, store = corpus
    src = drive.parent.parent / "src-drive"
    n = len(open_dataset(drive).keys("train"))
    build("drive", src, tmp_path / "same", size=64)  # identical rebuild elsewhere: same generation, accepted
    assert len(list(teacher_shards(str(tmp_path / "same" / "drive"), store, split="train", fields=FIELDS))) == n
    build("drive", src, tmp_path / "other", size=64, resize="longest")  # other pixels under the same keys
    other = str(tmp_path / "other" / "drive")
    with pytest.raises(ValueError, match=r"cached from .*/shards/drive .* but .*/other/drive is another build of "
                                         r"'drive'.*allow_mismatch=True \(--allow-source-mismatch\)"):
        teacher_shards(other, store, split="train", fields=FIELDS)
    assert len(list(teacher_shards(other, store, split="train", fields=FIELDS, allow_mismatch=True))) == n
    example = runpy.run_path(str(EXAMPLE))["main"]
    with pytest.raises(ValueError, match="another build"):
        example(["--shards", other, "--teacher", store, "--teacher-run", "random-sam-drive", "--steps", "1"])
    history = example(["--shards", other, "--teacher", store, "--steps", "1", "--batch-size", "2",
                       "--allow-source-mismatch"])
    assert len(history) == 1


def test_hflip_only_where_a_run_cached_it(corpus, tmp_path):
    drive, dsb, _ = corpus
    store = str(tmp_path / "views.zarr")
    cache_teacher(_params(drive, store, views=("identity", "hflip")), execution=CPU)
    cache_teacher(_params(dsb, store), execution=CPU)
    features = TeacherFeatures(store)
    assert features.views == ["identity"] and features.runs == ["random-sam-drive", "random-sam-dsb2018"]
    plain = {s["key"]: s for s in teacher_shards([str(drive), str(dsb)], store, fields=FIELDS, shuffle=False)}
    for s in teacher_shards([str(drive), str(dsb)], store, hflip=1.0, fields=FIELDS, shuffle=False):
        p = plain[s["key"]]
        if s["key"].startswith("drive-"):
            assert s["teacher_view"] == "hflip" and torch.equal(s["image"], p["image"].flip(-1))
            assert np.array_equal(s["teacher"].numpy(), features.get(s["key"], "hflip"))
        else:
            assert s["teacher_view"] == "identity" and torch.equal(s["image"], p["image"])
    with pytest.raises(KeyError, match="view 'hflip' is not in"):
        features.get(next(k for k in features.keys() if k.startswith("dsb2018-")), "hflip")
    with pytest.raises(ValueError, match="needs the hflip view"):
        TeacherJoin([], TeacherFeatures(store, "random-sam-dsb2018"), hflip=0.5)


@pytest.fixture(scope="module")
def sa1b_store(tmp_path_factory, corpus):
    """Two SA-1B tars cached with both views into the corpus's store layout (a store of its own + a medical run)."""
    root = tmp_path_factory.mktemp("sa1b-stream")
    rng = np.random.default_rng(0)
    write_sa1b_tar(root / "SA-1B" / "sa_000000.tar", [1, 2, 3, 4, 5], rng,
                   sizes=[(48, 64), (64, 30), (64, 64), (20, 64), (50, 40)])
    write_sa1b_tar(root / "SA-1B" / "sa_000001.tar", [6, 7, 8], rng, sizes=[(64, 48)] * 3)
    store = str(root / "t.zarr")
    cache_teacher(_params(root / "SA-1B", store, views=("identity", "hflip"), dtype="float32"), execution=CPU)
    cache_teacher(_params(corpus[0], store, dtype="float32"), execution=CPU)
    return root, store


def test_sa1b_stream_yields_images_and_their_features(sa1b_store):
    root, store = sa1b_store
    stream = SA1BStream(store, size=64, normalize="sam", shuffle=False)
    reader = FeatureReader.open(store, "random-sam-SA-1B")
    samples = list(stream)
    assert [s["key"] for s in samples] == reader.keys()  # tar order, every cached image once
    for s in samples:
        row = reader.keys().index(s["key"])
        assert s["image"].shape == (3, 64, 64) and s["teacher_view"] == "identity"
        assert np.array_equal(s["teacher"].numpy(), reader.read(row))
        assert np.array_equal(s["teacher_valid"].numpy(), reader.valid_mask(row))
        rows, cols = np.flatnonzero(s["image"].abs().sum(0).any(1)), np.flatnonzero(s["image"].abs().sum(0).any(0))
        cells = s["teacher_valid"].numpy()
        assert -(-(rows.max() + 1) // 16) <= cells.any(1).sum() and -(-(cols.max() + 1) // 16) <= cells.any(0).sum()
    flipped = list(SA1BStream(store, size=64, hflip=1.0, shuffle=False))
    assert all(s["teacher_view"] == "hflip" for s in flipped)
    assert np.array_equal(flipped[0]["teacher"].numpy(), reader.read(0, "hflip"))
    assert not torch.equal(flipped[0]["image"], samples[0]["image"])


def test_sa1b_stream_in_dataloader_workers_and_moved_tars(sa1b_store, tmp_path):
    root, store = sa1b_store
    moved = tmp_path / "moved"
    shutil.copytree(root / "SA-1B", moved)
    stream = SA1BStream(store, size=32, seed=3, shuffle_buffer=4, tars=str(moved))
    stream.set_epoch(1)
    loader = torch.utils.data.DataLoader(stream, batch_size=3, num_workers=2, collate_fn=collate)
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == sorted(FeatureReader.open(store, "random-sam-SA-1B").keys())
    assert next(iter(loader))["image"].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="not SA-1B tars: join it with MedShards"):
        SA1BStream(store, run="random-sam-drive")


def test_sa1b_stream_resumes_and_continues_on_other_readers(sa1b_store):
    """SA1BStream's state: the rest of the epoch in order; two ranks' states merged continue on one reader."""
    import json
    from collections import Counter

    from medprep.loaders import merge_states

    _, store = sa1b_store

    def make(rank: int = 0, world: int = 1) -> SA1BStream:
        return SA1BStream(store, size=32, seed=2, shuffle_buffer=3, hflip=0.5, partitions=4, rank=rank,
                          world_size=world)

    full = [(s["key"], s["teacher_view"]) for s in make()]
    assert len(full) == 8
    ds = make()
    it = iter(ds)
    head = [next(it)["key"] for _ in range(3)]
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(ds.state_dict())))
    assert head == [k for k, _ in full[:3]] and [(s["key"], s["teacher_view"]) for s in resumed] == full[3:]
    seen, states = [], []
    for rank in (0, 1):
        ds = make(rank, 2)
        it = iter(ds)
        seen += [next(it)["key"] for _ in range(2)]
        states.append(ds.state_dict())
    one = make()
    one.load_state_dict(merge_states(states))
    rest = [s["key"] for s in one]
    assert Counter(seen + rest) == Counter(k for k, _ in full) and len(rest) == 4


def test_student_image_geometry():
    image = np.full((30, 60, 3), 255, np.uint8)
    out = student_image(image, 32, "none")
    assert out.shape == (3, 32, 32)
    assert (out[:, :16] == 255).all() and (out[:, 16:] == 0).all()  # longest side 32: 16 rows of content, padded
