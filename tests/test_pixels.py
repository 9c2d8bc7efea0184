"""The shared pixel rules (medprep.manifests.pixels) against their references."""

from __future__ import annotations

import numpy as np
import pytest

from medprep.manifests.pixels import longest_side, make_key, patch_pyramid, patch_size, patch_targets, safe_key


def test_longest_side_is_segment_anythings_preprocess_shape():
    resize = pytest.importorskip("segment_anything.utils.transforms")
    for h, w in [(1, 1), (48, 64), (565, 584), (1024, 1023), (333, 1000), (4000, 3), (17, 1024)]:
        for size in (64, 256, 1024):
            assert longest_side(h, w, size) == resize.ResizeLongestSide.get_preprocess_shape(h, w, size)


def test_patch_pyramid_equals_one_max_pool_per_size():
    rng = np.random.default_rng(0)
    mask = rng.random((64, 96)) > 0.97
    pyramid = patch_pyramid(mask, (32, 8, 16, 4))
    assert list(pyramid) == [32, 8, 16, 4]
    for p, grid in pyramid.items():
        ref = mask.reshape(64 // p, p, 96 // p, p).any(axis=(1, 3)).astype(np.uint8)
        assert grid.dtype == np.uint8 and np.array_equal(grid, ref) and np.array_equal(patch_targets(mask, p), ref)
    with pytest.raises(ValueError, match="patch size 7 does not divide the mask size 64x96"):
        patch_targets(mask, 7)
    assert (patch_size("patch16"), patch_size("patch0"), patch_size("mask")) == (16, None, None)


def test_keys_are_tar_safe():
    assert make_key("drive", "21_training") == "drive-21_training"
    assert make_key("stare", "im0001.ah.ppm") == "stare-im0001_ah_ppm"
    assert make_key("x", "../a b/") == "x-a_b" and make_key("x", "...") == "x-x"
    assert safe_key("sa_1.jpg") == "sa_1_jpg" and safe_key("_a_") == "_a_"


@pytest.mark.parametrize("mode", ["stretch", "longest"])
def test_instance_count_on_the_source_map_when_the_resize_keeps_every_pixel(mode):
    """The build counts an instance map's labels on the source map when no axis shrinks (cheaper); that must be the
    count of the written, resized map for every size, including odd enlargements, and not be used when one shrinks."""
    from medprep.prep.imaging import Geometry
    from medprep.prep.sample import _labels_present

    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        size = int(rng.integers(8, 700))
        inst = np.zeros((h, w), np.uint16)
        n = int(rng.integers(1, 200))
        inst[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.integers(1, 65535, n)  # one-pixel instances
        geo = Geometry.plan((h, w), size, mode)
        resized = geo.label(inst)
        if geo.samples_every_pixel():
            assert set(np.unique(resized)) == set(np.unique(inst))
            assert _labels_present(inst) == _labels_present(resized) == len(np.unique(resized[resized > 0]))
        else:  # counted on the written map
            assert _labels_present(resized) == len(np.unique(resized[resized > 0]))


def test_mask_box_is_the_bounding_rect_of_the_nonzero_pixels():
    """The row-sum box of ``binarize_box`` against ``cv2.boundingRect``: random sparse and dense masks, empty ones,
    one pixel in a corner, and a row too wide for int32 sums (the boundingRect fallback)."""
    import cv2

    from medprep.prep.imaging import _nonzero_box

    def rect(arr: np.ndarray) -> tuple[slice, slice]:
        x, y, w, h = cv2.boundingRect(arr)
        return slice(y, y + h), slice(x, x + w)

    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        arr = ((rng.random((h, w)) < rng.choice([0.0, 0.001, 0.05, 0.9])) * rng.integers(1, 256)).astype(np.uint8)
        assert _nonzero_box(arr) == rect(arr)
    corner = np.zeros((50, 70), np.uint8)
    corner[49, 69] = 255
    assert _nonzero_box(corner) == (slice(49, 50), slice(69, 70))
    wide = np.zeros((1, 1 << 23), np.uint8)
    wide[0, 5:9] = 255
    assert _nonzero_box(wide) == rect(wide) == (slice(0, 1), slice(5, 9))
