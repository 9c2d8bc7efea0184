"""Teacher features equal segment_anything's SamPredictor; preprocessing options; checkpoint loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from medprep.distill import CacheExecution, CacheParams, FeatureStore, Preprocess, cache_teacher, load_teacher
from medprep.distill.synthetic import natural_image, sam_around

CPU = CacheExecution("cpu")

TINY = "medprep.distill.teachers:random_sam"


def _folder(tmp_path, shapes, seed=0):
    rng = np.random.default_rng(seed)
    root = tmp_path / "imgs"
    root.mkdir()
    images = []
    for i, (h, w) in enumerate(shapes):
        img = natural_image(h, w, rng)
        Image.fromarray(img).save(root / f"im{i}.png")
        images.append(img)
    return root, images


@pytest.mark.parametrize("img_size, keep_padding", [(64, True), (128, True), (64, False)])
def test_cached_features_equal_sam_predictor(tmp_path, img_size, keep_padding):
    """Square and longest-side (non-square, padded) images through the whole cache vs SamPredictor.features
    (by default the padding cells are stored as 0)."""
    shapes = [(img_size, img_size), (50, 90), (90, 37), (30, 30)]
    root, images = _folder(tmp_path, shapes)
    params = CacheParams(TINY, root, tmp_path / "t.zarr", "r", encoder_kwargs={"img_size": img_size},
                         dtype="float32", shard_samples=2, batch_size=2, keep_padding=keep_padding)
    cache_teacher(params, execution=CPU)
    teacher = params.teacher()
    store = FeatureStore.open(str(tmp_path / "t.zarr"), "r")
    predictor = SamPredictor(sam_around(teacher.encoder))
    for i, img in enumerate(images):
        predictor.set_image(img)
        ref = predictor.features[0].numpy()
        h, w = predictor.input_size  # resized (unpadded) size, as SamPredictor records it
        assert tuple(store.group["valid_hw"][i]) == (-(-h // 16), -(-w // 16))
        mask = store.valid_mask(i)
        assert mask.sum() == (-(-h // 16)) * (-(-w // 16)) and mask[0, 0]
        assert np.abs(store.read(i) - (ref if keep_padding else np.where(mask, ref, 0))).max() <= 1e-5


def test_checkpoint_loaded_weights_only(tmp_path):
    teacher = load_teacher(TINY, encoder_kwargs={"img_size": 64, "seed": 3})
    ckpt = tmp_path / "tiny.pth"
    torch.save(teacher.encoder.state_dict(), ckpt)
    loaded = load_teacher(TINY, str(ckpt), encoder_kwargs={"img_size": 64, "seed": 0})
    assert len(loaded.checkpoint_sha256) == 64
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.encoder(x), teacher.encoder(x))
    torch.save({"something": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit the encoder"):
        load_teacher(TINY, str(tmp_path / "wrong.pth"), encoder_kwargs={"img_size": 64})
    with pytest.raises(ValueError, match="does not fit the encoder"):  # same keys, other shapes
        load_teacher(TINY, str(ckpt), encoder_kwargs={"img_size": 64, "embed_dim": 48})


def test_builtin_teachers_need_a_checkpoint():
    with pytest.raises(ValueError, match="needs --checkpoint"):
        load_teacher("vit_h")
    with pytest.raises(ValueError, match="unknown --encoder"):
        load_teacher("vit_x")
    with pytest.raises(ValueError, match="cannot import teacher"):
        load_teacher("no.such.module:fn")


def test_normalizations_and_resize_paths():
    img = natural_image(40, 80, np.random.default_rng(1))
    sizes = torch.tensor([[32, 64]])
    unit = Preprocess.named("unit", img_size=64)
    canvas, size = unit.host(img)
    assert size == (32, 64)
    x = unit.device(canvas[None], sizes)[0]
    assert x.min() >= 0 and x.max() <= 1 and (x[:, 32:] == 0).all()
    esp = Preprocess.named("esp-medsam", img_size=64)
    assert esp.pixel_std == esp.pixel_mean
    pil = Preprocess.named("sam", 64, "pil")
    tor = Preprocess.named("sam", 64, "torch")
    a = pil.device(pil.host(img)[0][None], sizes)
    b = tor.device(tor.host(img)[0][None], sizes)
    assert a.shape == b.shape and (a - b).abs().mean() < 0.05  # close, not equal: two resize paths
    with pytest.raises(ValueError, match="expected one of"):
        Preprocess.named("imagenet")
    with pytest.raises(ValueError, match="RGB uint8"):
        pil.host(img.astype(np.float32))


def test_registry_vit_b_and_medsam_from_a_local_checkpoint(tmp_path):
    """The real builder path (sam_model_registry) with a full SAM state dict; no forward pass (15 s at 1024)."""
    from segment_anything import sam_model_registry

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = sam_model_registry["vit_b"]()
    ckpt = tmp_path / "sam_vit_b.pth"
    torch.save(sam.state_dict(), ckpt)
    for name, pre in (("vit_b", Preprocess.named("sam", 1024)), ("medsam", Preprocess.named("minmax", 1024, "medsam"))):
        teacher = load_teacher(name, str(ckpt))
        assert torch.equal(teacher.encoder.patch_embed.proj.weight, sam.image_encoder.patch_embed.proj.weight)
        assert teacher.preprocess == pre
        assert teacher.to_attrs()["checkpoint_sha256"] == teacher.checkpoint_sha256
