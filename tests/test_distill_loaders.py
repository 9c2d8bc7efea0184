"""Student side: features by key, joined with MedShards samples, flipped views, padding masks, the loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medprep.distill import CacheExecution, CacheParams, MedicalSource, SourceSpec, cache_teacher
from medprep.distill.loss import masked_mse
from medprep.distill.preprocess import teacher_input
from medprep.loaders.teacher import TeacherFeatures, TeacherJoin, teacher_shards
from medprep.prep import build, synthetic

CPU = CacheExecution("cpu")

TINY = "medprep.distill.teachers:random_sam"
FIELDS = ("image", "mask", "patch16", "key")


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """Tall ISIC images built longest-side at 128 (content in the left third), cached with both views."""
    root = tmp_path_factory.mktemp("med")
    src = synthetic.make("isic2018", root / "src", n=(4, 1, 1), hw=(120, 40))
    out = root / "shards" / "isic2018"
    build("isic2018", src, out.parent, size=128, resize="longest")
    params = CacheParams(TINY, out, root / "t.zarr", "r", encoder_kwargs={"img_size": 128}, dtype="float32",
                         views=("identity", "hflip"), shard_samples=2, batch_size=2)
    cache_teacher(params, execution=CPU)
    return out, params.out, params


def test_features_by_key_and_padding_masks(cached):
    out, store, params = cached
    teacher = params.teacher()
    feats = TeacherFeatures(store)
    src = MedicalSource(str(out))
    assert feats.keys() == src.keys and len(feats) == 6 and src.keys[0] in feats
    for key in src.keys[:2]:
        image, valid_px = src.load(src.keys.index(key))
        assert valid_px[0] == 128 and valid_px[1] < 50
        # the teacher's own preprocessing of the valid pixels (normalised alone, padded with 0), flipped
        x = teacher_input(teacher.preprocess, np.ascontiguousarray(image[:, ::-1]), valid_px, flipped=True)
        with torch.inference_mode():
            ref = teacher.encoder(torch.from_numpy(x)[None])[0].numpy()
        ident, flip = feats.valid_mask(key), feats.valid_mask(key, "hflip")
        assert np.abs(feats.get(key, "hflip") - np.where(flip, ref, 0)).max() <= 1e-5  # padding stored as 0
        assert ident.all(axis=0)[:3].all() and not ident[:, 4:].any()  # content: left 3 columns of cells
        assert flip[:, 5:].all() and not flip[:, :4].any()  # mirrored to the right
    with pytest.raises(KeyError, match="not in teacher store"):
        feats.get("isic2018-nope")


def test_join_with_medshards_flips_inputs_and_targets(cached):
    out, store, _ = cached
    plain = {s["key"]: s for s in teacher_shards(str(out), store, split="train", fields=FIELDS, shuffle=False)}
    flipped = list(teacher_shards(str(out), store, split="train", hflip=1.0, fields=FIELDS, shuffle=False))
    feats = TeacherFeatures(store)
    assert len(flipped) == len(plain) == 4
    for s in flipped:
        p = plain[s["key"]]
        assert s["teacher_view"] == "hflip" and p["teacher_view"] == "identity"
        assert torch.equal(s["image"], p["image"].flip(-1)) and torch.equal(s["patch16"], p["patch16"].flip(-1))
        assert np.array_equal(s["teacher"].numpy(), feats.get(s["key"], "hflip"))
        assert torch.equal(s["teacher_valid"], torch.from_numpy(feats.valid_mask(s["key"], "hflip")))
        assert torch.equal(p["teacher"], torch.from_numpy(feats.get(p["key"])))
    some = list(teacher_shards(str(out), store, split="train", hflip=0.5, seed=3, fields=FIELDS, shuffle=False))
    again = list(teacher_shards(str(out), store, split="train", hflip=0.5, seed=3, fields=FIELDS, shuffle=False))
    assert [s["teacher_view"] for s in some] == [s["teacher_view"] for s in again]


def test_missing_and_unfinished_keys_fail_loudly(cached, tmp_path):
    out, _, params = cached
    store = str(tmp_path / "part.zarr")
    src = MedicalSource(str(out), "train")
    cache_teacher(replace(params, source=SourceSpec(str(out), split="train"), out=store, dtype="float16",
                          views=("identity",)), shards=[0], execution=CPU)
    feats = TeacherFeatures(store)
    assert feats.get(src.keys[0]).shape == (256, 8, 8)
    with pytest.raises(KeyError, match="not cached yet"):
        feats.get(src.keys[2])
    with pytest.raises(KeyError, match="another dataset or split"):
        list(TeacherJoin([{"key": "isic2018-elsewhere"}], feats))
    with pytest.raises(ValueError, match="needs the hflip view"):
        TeacherJoin([], feats, hflip=0.5)


def test_masked_mse_ignores_padding():
    teacher = torch.zeros(2, 4, 3, 3)
    student = torch.zeros(2, 4, 3, 3)
    student[:, :, :, 2] = 100.0  # wrong only in the padded column
    valid = torch.ones(2, 3, 3, dtype=torch.bool)
    valid[:, :, 2] = False
    assert masked_mse(student, teacher, valid).item() == 0.0
    assert masked_mse(student, teacher).item() > 0
    with pytest.raises(ValueError, match="project the student"):
        masked_mse(torch.zeros(2, 4, 6, 6), teacher)


def test_demo_cache_step_is_labelled_random(cached, tmp_path):
    from medprep.distill.demo import cache_demo

    out, _, _ = cached
    text = cache_demo(out.parent, tmp_path / "d.zarr", size=64)
    assert "RANDOM-WEIGHT" in text and "random-sam-isic2018: 6 samples" in text
    assert len(TeacherFeatures(str(tmp_path / "d.zarr"), "random-sam-isic2018")) == 6


def test_join_in_dataloader_workers(cached):
    from medprep.loaders import collate

    out, store, _ = cached
    data = teacher_shards(str(out), store, split="train", fields=FIELDS, shuffle=False)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    keys = sorted(k for b in batches for k in b["key"])
    assert keys == sorted(MedicalSource(str(out), "train").keys)
    for b in batches:
        assert b["teacher"].shape[1:] == (256, 8, 8) and b["teacher_valid"].dtype == torch.bool
        assert masked_mse(torch.zeros_like(b["teacher"]), b["teacher"], b["teacher_valid"]) > 0


def test_join_resumes_mid_epoch_through_stateful_dataloader(cached):
    """TeacherJoin's state carries its reader's: the restored loader yields the rest, with the same flip draws."""
    import json

    from torchdata.stateful_dataloader import StatefulDataLoader

    from medprep.loaders import collate, merge_states

    out, store, _ = cached

    def make() -> TeacherJoin:
        return teacher_shards(str(out), store, split="train", fields=FIELDS, hflip=0.5, seed=1, shuffle_buffer=2,
                              partitions=2)

    full = [(s["key"], s["teacher_view"]) for s in make()]
    loader = StatefulDataLoader(make(), batch_size=1, collate_fn=collate)
    it = iter(loader)
    head = [next(it)["key"][0] for _ in range(2)]
    saved = json.loads(json.dumps(loader.state_dict()))
    resumed = StatefulDataLoader(make(), batch_size=1, collate_fn=collate)
    resumed.load_state_dict(saved)
    rest = [(b["key"][0], b["teacher_view"][0]) for b in resumed]
    assert head == [k for k, _ in full[:2]] and rest == full[2:]
    merged = merge_states([saved])
    assert merged["kind"] == "TeacherJoin" and merged["samples"]["cursors"] == saved["dataset_state"]["samples"][
        "cursors"]
    again = make()
    again.load_state_dict(merged)
    assert [(s["key"], s["teacher_view"]) for s in again] == full[2:]


def test_train_student_example_distils_stored_features(cached, tmp_path):
    """examples/train_student.py --teacher: the distillation term enters the loss and the student learns it."""
    import runpy
    from pathlib import Path

    out, store, _ = cached
    example = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "train_student.py"))
    history = example["main"](["--shards", str(out), "--teacher", store, "--steps", "12", "--batch-size", "2",
                               "--lr", "3e-3"])
    assert len(history) == 12 and all("distill" in h and np.isfinite(h["distill"]) for h in history)
    assert min(h["distill"] for h in history[-3:]) < history[0]["distill"]
