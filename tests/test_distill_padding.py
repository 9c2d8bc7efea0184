"""The padding rule of every teacher: a padded image is preprocessed as the teacher's own code preprocesses its valid
pixels (normalised alone, then padded with 0), on the cache's path as in the reference ``check-teacher`` uses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from medprep.distill import CacheExecution, CacheParams, cache_teacher
from medprep.distill.check import check_teacher, dice, teacher_box
from medprep.distill.preprocess import PREPROCESS_VERSION, Preprocess, teacher_input
from medprep.distill.synthetic import natural_image

CPU = CacheExecution("cpu")


def _padded(h: int, w: int, vh: int, vw: int, seed: int = 0) -> np.ndarray:
    """An ``h x w`` image whose top-left ``vh x vw`` is content (darkest pixel above 0) and the rest 0."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:vh, :vw] = np.clip(natural_image(vh, vw, np.random.default_rng(seed)), 30, 220)
    return img


@pytest.mark.parametrize("pre", [Preprocess.named("sam", 64, "pil"), Preprocess.named("sam", 64, "torch"),
                                 Preprocess.named("minmax", 64, "area"), Preprocess.named("minmax", 64, "medsam"),
                                 Preprocess.named("minmax", 64, "pil")], ids=lambda p: f"{p.resize}-{p.minmax}")
@pytest.mark.parametrize("flipped", [False, True])
def test_cache_path_equals_the_teachers_own_preprocessing_of_the_valid_pixels(pre, flipped):
    for img, valid in ((_padded(128, 128, 128, 99), (128, 99)),  # a padded --resize longest build, 2x the input
                       (_padded(64, 64, 50, 64), (50, 64)),  # at the input size: no resize
                       (natural_image(90, 60, np.random.default_rng(2)), None)):  # unpadded
        image = np.ascontiguousarray(img[:, ::-1]) if flipped else img
        canvas, region = pre.place(image, valid, flipped)
        ours = pre.device(canvas[None], torch.tensor([region]))[0]
        ref = torch.from_numpy(teacher_input(pre, image, valid, flipped))
        assert (ours - ref).abs().max() <= 1e-5, (img.shape, valid)
        rows, x0, x1 = region
        inside = torch.zeros(ref.shape[1:], dtype=torch.bool)
        inside[:rows, x0:x1] = True
        assert (ref[:, ~inside] == 0).all()  # the teacher's padding: 0 after normalisation
        if pre.minmax:  # min-max over the valid pixels: the darkest valid pixel is 0, not the padding's
            assert ref[:, inside].min() == 0 and abs(float(ref[:, inside].max()) - 1) < 1e-6


def test_the_old_rule_differs_on_padded_images():
    """The whole padded canvas normalised (medprep before preprocess_version 2) is not the teacher's input."""
    pre = Preprocess.named("sam", 64, "pil")
    img = _padded(64, 64, 64, 50)
    canvas, hw = pre.host(img)  # the whole image as content: its padding normalised to -mean/std
    old = pre.device(canvas[None], torch.tensor([hw]))[0]
    new = torch.from_numpy(teacher_input(pre, img, (64, 50)))
    assert (old[:, :, 50:] < -1.5).all() and (new[:, :, 50:] == 0).all()


def test_version_recorded_and_check_teacher_json(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    from PIL import Image

    Image.fromarray(natural_image(48, 64, np.random.default_rng(0))).save(root / "a.png")
    params = CacheParams("random-sam", root, tmp_path / "t.zarr", "r", encoder_kwargs={"img_size": 64},
                         dtype="float32")
    store = cache_teacher(params, execution=CPU).store
    assert store.attrs["preprocess_version"] == PREPROCESS_VERSION
    report = check_teacher(str(tmp_path / "t.zarr"))
    data = json.loads(json.dumps(report.to_json()))
    assert data["cosine_min"] > 0.99999 and data["dice_mean"] is None  # random-sam: no prompt decoder
    assert [s["key"] for s in data["samples"]] == report.keys and report.dice_min is None and report.ok(0.999, 0.99)
    # a run made before the fix (no preprocess_version) is not resumed with the new rule
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="a")["r"]
    attrs = dict(g.attrs)
    del attrs["preprocess_version"]
    g.attrs.clear()
    g.attrs.update(attrs)
    with pytest.raises(ValueError, match="preprocess_version: store has None"):
        cache_teacher(params, execution=CPU)


def test_box_prompts_as_the_teachers_compute_them():
    mask = np.zeros((600, 500), bool)
    mask[101:403, 35:290] = True  # x 35..289, y 101..402 inclusive
    s = 256 / 600
    # LiteMedSAM's resize_box_to_256: int(b * 256 / max(H, W)) of the inclusive box
    assert teacher_box(mask, (s, s), "truncate").tolist() == [int(35 * s), int(101 * s), int(289 * s), int(402 * s)]
    assert np.allclose(teacher_box(mask, (s, s), "scale"), [35 * s, 101 * s, 289 * s, 402 * s])
    assert teacher_box(mask, (s, s), "truncate", x0=10)[[0, 2]].tolist() == [int(35 * s) + 10, int(289 * s) + 10]
    assert dice(mask, mask) == 1.0 and dice(mask, ~mask) == 0.0 and dice(mask & False, mask & False) == 1.0
