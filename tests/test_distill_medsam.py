"""MedSAM's own preprocessing (``--encoder medsam``) against an independent implementation: the lines of MedSAM's
published ``MedSAM_Inference.py`` (bowang-lab/MedSAM), run with scikit-image as MedSAM runs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medprep.distill import CacheExecution, CacheParams, FeatureStore, Preprocess, cache_teacher
from medprep.distill.synthetic import natural_image

CPU = CacheExecution("cpu")

transform = pytest.importorskip("skimage.transform")


def medsam_inference_input(img_3c: np.ndarray, size: int) -> torch.Tensor:
    """``MedSAM_Inference.py``'s preprocessing, verbatim but for the size (1024 there): the image tensor its
    ``medsam_model.image_encoder`` receives, ``(1, 3, size, size)``."""
    img_1024 = transform.resize(img_3c, (size, size), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    img_1024 = (img_1024 - img_1024.min()) / np.clip(img_1024.max() - img_1024.min(), a_min=1e-8, a_max=None)
    return torch.tensor(img_1024).float().permute(2, 0, 1).unsqueeze(0)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    grey = natural_image(50, 90, rng)[..., :1]
    return [
        natural_image(200, 130, rng),  # shrunk (anti-aliased), not square
        natural_image(40, 70, rng),  # enlarged
        np.repeat(grey, 3, axis=2),  # a grey image as MedSAM makes it 3-channel
        natural_image(64, 64, rng),  # already at size
        np.full((30, 30, 3), 7, np.uint8),  # constant: max - min clipped to 1e-8, all zeros
    ]


@pytest.mark.parametrize("size", [64, 96])
def test_medsam_preprocessing_equals_medsam_inference(size):
    pre = Preprocess.named("minmax", size, "medsam")
    for img in _images():
        canvas, hw = pre.host(img)
        assert hw == (size, size)  # the whole image stretched, no padding
        ours = pre.device(canvas[None], torch.tensor([hw]))
        ref = medsam_inference_input(img, size)
        assert (ours - ref).abs().max() <= 1e-6, img.shape


def test_cached_medsam_features_equal_the_encoder_on_medsams_input(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    root.mkdir()
    images = [natural_image(h, w, rng) for h, w in ((90, 50), (40, 64), (64, 64))]
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / f"im{i}.png")
    params = CacheParams("random-sam", root, tmp_path / "t.zarr", "r", encoder_kwargs={"img_size": 64},
                         normalize="minmax", resize="medsam", dtype="float32", shard_samples=3, batch_size=3)
    store = cache_teacher(params, execution=CPU).store
    assert store.attrs["preprocess"]["resize"] == "medsam" and store.attrs["preprocess"]["minmax"] is True
    encoder = params.teacher().encoder
    for i, img in enumerate(images):
        with torch.inference_mode():
            ref = encoder(medsam_inference_input(img, 64))[0].numpy()
        assert np.abs(FeatureStore.open(str(tmp_path / "t.zarr")).read(i) - ref).max() <= 1e-5
        assert store.valid_mask(i).all()  # stretched: every cell sees the image
