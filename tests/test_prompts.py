"""Point and box prompts (medprep.loaders.prompts) against an independent OpenCV connectedComponentsWithStats
computation, on fake and real masks, before and after flips and rotations; the box perturbation is seeded,
reproducible and bounded."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medprep.loaders import Affine, Augment, MedShards, MedShardsIndexed, Prompts, collate
from medprep.loaders.prompts import BOX_JITTER, boxes, points
from medprep.manifests import open_dataset
from medprep.prep import build, synthetic

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
COUNT = 400  # more slots than any test mask has regions: every region is compared


def reference(mask: np.ndarray) -> list[tuple[tuple[int, int, int, int], tuple[float, float], np.ndarray]]:
    """(inclusive box, centroid, pixel mask) of every 8-connected component, straight from OpenCV."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        x, y, w, h, _ = stats[i]
        out.append(((int(x), int(y), int(x + w - 1), int(y + h - 1)), tuple(centroids[i]), labels == i))
    return out


def reference_instances(inst: np.ndarray):
    """The same per instance: OpenCV's components of each instance combined (box union, area-weighted centroid)."""
    out = []
    for i in np.unique(inst[inst > 0]):
        n, _, stats, centroids = cv2.connectedComponentsWithStats((inst == i).astype(np.uint8), connectivity=8)
        area = stats[1:, 4].astype(float)
        box = (int(stats[1:, 0].min()), int(stats[1:, 1].min()), int((stats[1:, 0] + stats[1:, 2]).max() - 1),
               int((stats[1:, 1] + stats[1:, 3]).max() - 1))
        cx, cy = (centroids[1:] * area[:, None]).sum(0) / area.sum()
        out.append((box, (cx, cy), inst == i))
    return out


def expected_point(centroid: tuple[float, float], region: np.ndarray) -> tuple[int, int]:
    """The rounded centroid when it lies on the region, else the region pixel nearest to the centroid."""
    cx, cy = centroid
    x, y = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
    if region[y, x]:
        return x, y
    ys, xs = np.nonzero(region)
    d = (xs - cx) ** 2 + (ys - cy) ** 2
    i = int(np.argmin(d))
    return int(xs[i]), int(ys[i])


def check(mask: np.ndarray, inst: np.ndarray | None = None) -> None:
    """``points`` and exact ``boxes`` of a mask (or instance map) agree with the OpenCV reference."""
    check_prompts(mask, inst, *points(mask, inst, count=COUNT), *boxes(mask, inst, count=COUNT, jitter=0))


def check_prompts(mask: np.ndarray, inst: np.ndarray | None, pts: np.ndarray, pvalid: np.ndarray, bxs: np.ndarray,
                  bvalid: np.ndarray) -> None:
    ref = reference_instances(inst) if inst is not None else reference(mask)
    assert pvalid.sum() == len(ref) and bvalid.sum() == len(ref) + (len(ref) > 0)
    assert not pts[~pvalid].any() and not bxs[~bvalid].any()  # padding is zero
    # every point lies on a region, one point per region, and it is the expected one
    got = {tuple(int(v) for v in p) for p in pts[pvalid]}
    assert got == {expected_point(c, r) for _, c, r in ref}
    assert {tuple(int(v) for v in b) for b in bxs[1:][bvalid[1:]]} == {b for b, _, _ in ref}
    if ref:
        ys, xs = np.nonzero(mask if inst is None else inst > 0)
        assert tuple(bxs[0].astype(int)) == (xs.min(), ys.min(), xs.max(), ys.max())
    # largest first
    areas = [int(r.sum()) for _, _, r in sorted(ref, key=lambda t: -t[2].sum())]
    listed = [int(next(r for _, _, r in ref if r[int(p[1]), int(p[0])]).sum()) for p in pts[pvalid]]
    assert listed == areas


def transforms(arr: np.ndarray):
    """The array under the flips and quarter turns that Augment applies."""
    yield "identity", arr
    yield "hflip", np.flip(arr, 1)
    yield "vflip", np.flip(arr, 0)
    for k in (1, 2, 3):
        yield f"rot90x{k}", np.rot90(arr, k)
    yield "hflip+rot90", np.rot90(np.flip(arr, 1), 1)


def fake_mask(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """Discs, rings (centroid off the region), crescents, diagonal-only contacts (one 8-connected component) and
    one-pixel regions."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(2, 6)):
        c = (int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10)))
        r = int(rng.integers(3, 12))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(m, c, r, 1, -1)
        elif kind == 1:
            cv2.circle(m, c, r, 1, 2)  # ring
        else:
            cv2.ellipse(m, c, (r, r), float(rng.uniform(0, 360)), 0, 200, 1, 2)  # open arc
    m[0, 0] = m[1, 1] = 1  # touching only diagonally
    m[h - 1, w - 1] = 1
    return m.astype(bool)


@pytest.mark.parametrize("seed", range(6))
def test_fake_masks_match_opencv_under_flips_and_rotations(seed):
    for name, m in transforms(fake_mask(seed)):
        check(np.ascontiguousarray(m))


def test_ring_centroid_moves_onto_the_ring():
    m = np.zeros((41, 41), np.uint8)
    cv2.circle(m, (20, 20), 15, 1, 2)
    pts, valid = points(m.astype(bool), count=2)
    assert valid.tolist() == [True, False]
    x, y = pts[0].astype(int)
    assert m[y, x] and abs(np.hypot(x - 20, y - 20) - 15) <= 1.5


def test_instances_of_an_instance_map():
    inst = np.zeros((64, 64), np.uint16)
    inst[5:15, 5:15] = 3
    inst[5:15, 15:25] = 700  # touches instance 3: one component, two instances
    inst[40:44, 40:44] = 3  # instance 3 has two parts
    inst[30:50, 5:25] = 9
    inst[35:45, 10:20] = 0  # a hole
    for _, a in transforms(inst):
        a = np.ascontiguousarray(a)
        check(a > 0, a)
    pts, valid = points(inst > 0, inst, count=8)
    assert valid.sum() == 3  # instances, not the 2 connected components of the mask


def test_padding_truncation_and_empty_masks():
    m = np.zeros((32, 32), bool)
    for i, side in enumerate((1, 2, 3, 4, 5)):
        m[2 + 6 * i: 2 + 6 * i + side, 2: 2 + side] = True
    pts, valid = points(m, count=3)
    assert valid.tolist() == [True, True, True]
    assert [int(p[1]) for p in pts] == [28, 22, 15]  # rows of the three largest squares' rounded centroids
    bxs, bvalid = boxes(m, count=2, jitter=0)
    assert bxs.shape == (3, 4) and bvalid.all()
    assert bxs[0].tolist() == [2, 2, 6, 30]  # the whole mask, although only 2 regions have a slot
    for f in (lambda: points(np.zeros((8, 8), bool), count=4), lambda: boxes(np.zeros((8, 8), bool), count=4)):
        arr, ok = f()
        assert not ok.any() and not arr.any()


def test_box_jitter_is_seeded_reproducible_and_bounded():
    m = fake_mask(3)
    exact, valid = boxes(m, count=COUNT, jitter=0)
    a, _ = boxes(m, count=COUNT, rng=7)
    b, _ = boxes(m, count=COUNT, rng=np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, boxes(m, count=COUNT, rng=8)[0])
    h, w = m.shape
    seen = set()
    for seed in range(200):
        j, jvalid = boxes(m, count=COUNT, rng=seed)
        assert np.array_equal(jvalid, valid)
        grow = np.concatenate([exact[valid, :2] - j[valid, :2], j[valid, 2:] - exact[valid, 2:]], 1)
        assert (grow >= 0).all() and (grow <= BOX_JITTER).all()  # outwards, by at most the jitter
        assert (j[valid, :2] >= 0).all() and (j[valid, 2] <= w).all() and (j[valid, 3] <= h).all()
        inner = (exact[valid, :2] >= BOX_JITTER) & (exact[valid, 2:] <= [w - BOX_JITTER, h - BOX_JITTER])
        seen.update(grow[:, :2][inner].astype(int).tolist())
    assert seen == set(range(BOX_JITTER + 1))  # every shift in [0, jitter] occurs away from the borders
    with pytest.raises(ValueError, match="jitter"):
        boxes(m, jitter=-1)


# -- real masks (../shared/realdata): skipped on a fresh clone without them -------------------------------------


def _real(pattern: str) -> list[Path]:
    files = sorted(REAL.glob(pattern))
    if not files:
        pytest.skip(f"no real data: {REAL / pattern} is absent (the real sample files are not shipped)")
    return files


def test_real_drive_vessel_masks():
    for f in _real("DRIVE/*/1st_manual/*.gif"):
        m = np.asarray(Image.open(f).convert("L")) > 127
        for _, a in transforms(m[::2, ::2]):  # half resolution keeps the test fast; hundreds of vessel pieces
            check(np.ascontiguousarray(a))


def test_real_kvasir_masks():
    for f in _real("Kvasir-SEG/masks/*.jpg"):
        m = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) > 127  # JPEG-compressed masks: threshold at 128
        for _, a in transforms(m):
            check(np.ascontiguousarray(a))


def test_real_dsb_instance_maps():
    for folder in _real("stage1_train/*/masks")[:3]:
        inst = None
        for i, f in enumerate(sorted(folder.glob("*.png")), 1):
            nucleus = np.asarray(Image.open(f)) > 0
            inst = np.zeros(nucleus.shape, np.uint16) if inst is None else inst
            inst[nucleus] = i
        for _, a in transforms(inst):
            a = np.ascontiguousarray(a)
            check(a > 0, a)


# -- loader fields: computed from the final (augmented) mask / instance map ---------------------------------------

SIZE = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prompt-shards")
    drive = synthetic.make("drive", root / "src-drive", n_train=6, n_test=1)
    dsb = synthetic.make("dsb2018", root / "src-dsb", n=10)
    return {"drive": build("drive", drive, root / "drive", size=SIZE).out,
            "dsb": build("dsb2018", dsb, root / "dsb", size=SIZE).out}


@pytest.mark.parametrize("augment", [None, Augment(hflip=1, vflip=0.5, rot90=1),
                                     Augment(affine=Affine(degrees=30, p=1))])
@pytest.mark.parametrize("name", ["drive", "dsb"])
def test_loader_prompts_follow_the_augmented_targets(built, name, augment):
    fields = ["mask", "points", "boxes", "key"] + (["inst"] if name == "dsb" else [])
    data = MedShards(built[name], "train", fields, augment=augment, prompts=Prompts(count=COUNT, box_jitter=0))
    n = 0
    for s in data:
        mask = s["mask"][0].numpy() > 0
        inst = s["inst"][0].numpy().astype(np.uint16) if name == "dsb" else None
        check_prompts(mask, inst, s["points"].numpy(), s["points_valid"].numpy(), s["boxes"].numpy(),
                      s["boxes_valid"].numpy())
        n += 1
    assert n == open_dataset(built[name]).manifest.nsamples("train")


def test_instance_prompts_without_requesting_inst(built):
    """DSB samples give one prompt per nucleus even when ``inst`` is not among the fields; DRIVE, which has no
    instance map, gives one per connected component."""
    both = MedShardsIndexed(built["dsb"], "train", ["inst", "points"], prompts=Prompts(count=COUNT))
    only = MedShardsIndexed(built["dsb"], "train", ["points"], prompts=Prompts(count=COUNT))
    assert "inst.png" in only.entries and "inst" not in only[0]
    for i in range(len(both)):
        assert torch.equal(both[i]["points"], only[i]["points"])
        assert int(only[i]["points_valid"].sum()) == len(np.unique(both[i]["inst"][both[i]["inst"] > 0]))


def test_loader_box_jitter_is_reproducible_bounded_and_collates(built):
    data = MedShardsIndexed(built["drive"], "train", ["mask", "boxes", "points"], augment=Augment(), seed=3,
                            prompts=Prompts(count=8, box_jitter=4))
    again = MedShardsIndexed(built["drive"], "train", ["mask", "boxes", "points"], augment=Augment(), seed=3,
                             prompts=Prompts(count=8, box_jitter=4))
    for i in range(len(data)):
        a, b = data[i], again[i]
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["mask"], b["mask"])
        exact, valid = boxes(a["mask"][0].numpy() > 0, count=8, jitter=0)
        got, ok = a["boxes"].numpy(), a["boxes_valid"].numpy()
        assert np.array_equal(ok, valid)
        grow = np.concatenate([exact[ok, :2] - got[ok, :2], got[ok, 2:] - exact[ok, 2:]], 1)
        assert (grow >= 0).all() and (grow <= 4).all()
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate)))
    assert batch["boxes"].shape == (4, 9, 4) and batch["boxes"].dtype == torch.float32
    assert batch["boxes_valid"].shape == (4, 9) and batch["boxes_valid"].dtype == torch.bool
    assert batch["points"].shape == (4, 8, 2) and batch["points_valid"].shape == (4, 8)
