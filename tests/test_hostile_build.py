"""Hostile input, third round, build side (issue 22): names cannot leave their folder, recipes carry only what
decides the bytes, only regular files inside --src are read, numbers that are not numbers fail, formats are read as
they say, and odd shapes get a clear reason. Each test tries to break one promise."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medprep.cli import app
from medprep.prep import BuildParams, SourceTree, build, synthetic
from medprep.prep import synthetic3d as s3
from medprep.prep.datasets import get_converter
from medprep.prep.imaging import ConversionError, decode
from medprep.prep.recipe import RUN_OPTIONS, read_recipe

runner = CliRunner()
SIZE = 64


def invoke(*args: object) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args], prog_name="medprep")
    return res.exit_code, res.output


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail the test instead of hanging when the block runs longer than ``seconds`` (a read of a FIFO)."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: something blocked")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def pairs(src: Path, names: list[str]) -> None:
    """imgs/<name>.png with masks/<name>.png, a square in each."""
    for n in names:
        img = np.full((16, 20, 3), 90, np.uint8)
        mask = np.zeros((16, 20), np.uint8)
        mask[4:10, 5:12] = 255
        synthetic.write(src / "imgs" / f"{n}.png", synthetic.png(img))
        synthetic.write(src / "masks" / f"{n}.png", synthetic.png(mask))


def folder_build(src: Path, out: Path, **kw: object):
    return build("folder", src, out, size=SIZE, images="imgs/*.png", masks="masks/{stem}.png",
                 modality="dermoscopy", name="mine", **kw)


# --- 1. names cannot leave their folder ------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["volumes", "medsam-npz", "folder"])
@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "", "/abs", "Upper", "x" * 65, "a\x00b"])
def test_every_dataset_name_is_checked_where_it_is_made(dataset, name):
    extra = {"images": "*.png", "masks": "{stem}.png"} if dataset == "folder" else {}
    with pytest.raises(ValueError, match="lower-case letters, digits") as e:
        BuildParams.of(dataset, modality="ct", name=name, **extra)
    assert repr(name) in str(e.value) and ("--name" if dataset == "folder" else "-o name") in str(e.value)


def test_empty_name_is_refused_before_any_work(tmp_path):
    """``-o name=`` (empty) stops the command before anything is read or created under --out."""
    src = s3.make_volumes(tmp_path / "src", cases=1)
    out = tmp_path / "out"
    code, text = invoke("build", "-d", "volumes", "--src", src, "--out", out, "-o", "modality=ct", "-o", "name=")
    assert code != 0 and "-o name" in text and "got ''" in text
    assert not out.exists()
    code, text = invoke("build", "-d", "volumes", "--src", src, "--out", out, "-o", "modality=ct", "-o",
                        "name=../../x")
    assert code != 0 and "'../../x'" in text and not out.exists() and not (tmp_path / "x").exists()


def test_export_name_cannot_leave_out(tmp_path):
    from medprep.prep.export import export

    built = build("drive", synthetic.make("drive", tmp_path / "src", n_train=2, n_test=1), tmp_path / "b",
                  size=SIZE).out
    with pytest.raises(ValueError, match="--name '../evil'"):
        export([built], tmp_path / "exp", "esp-medsam", name="../evil")
    assert not (tmp_path / "evil_data_split.json").exists()


# --- 2. recipes carry what decides the bytes -------------------------------------------------------------------------

@pytest.mark.parametrize("line", ['scheduler = "tcp://203.0.113.9:8786"', "workers = 8", "wait = 60",
                                  "progress-every = 1", "strict = true"])
def test_recipe_refuses_execution_options(tmp_path, line):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'dataset = "drive"\nsrc = "src"\nout = "out"\n{line}\n')
    key = line.split(" ")[0].replace("-", "_")
    with pytest.raises(ValueError, match=f"{key} decide how a build runs"):
        read_recipe(recipe)
    code, text = invoke("build", "--config", recipe)
    assert code == 2 and "decide how a build runs" in " ".join(text.split()) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("body, keys", [
    ('dataset = "drive"\npatch-sizes = [16]\npatch_sizes = [32]\n', "'patch-sizes' and 'patch_sizes'"),
    ('dataset = "folder"\n[options]\nmin-object-pixels = 1\nmin_object_pixels = 2\n',
     "[options] keys 'min-object-pixels' and 'min_object_pixels'"),
])
def test_recipe_key_spelled_twice_is_an_error(tmp_path, body, keys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(body)
    with pytest.raises(ValueError, match="spelled twice") as e:
        read_recipe(recipe)
    assert str(recipe) in str(e.value) and keys in str(e.value)


def test_every_build_option_is_a_recipe_key_or_an_execution_option():
    """A new option of ``medprep build`` has to be sorted: it decides the bytes (a recipe may hold it) or how the
    build runs (RUN_OPTIONS: never read from a recipe)."""
    options = {p.name for p in typer.main.get_command(app).commands["build"].params}
    byte_keys = {f for f in BuildParams.__dataclass_fields__ if f != "options"}
    converter_flags = {"src", "out", "images", "masks", "modality", "name", "groups_file", "option"}
    assert options - byte_keys - converter_flags - set(RUN_OPTIONS) == set()
    assert not set(RUN_OPTIONS) & byte_keys


# --- 3. inputs are regular files inside --src ------------------------------------------------------------------------

def test_fifo_device_and_links_out_of_src_are_failures_never_opened(tmp_path):
    """A FIFO named like an image (it would block the read forever), a mask linked to /dev/zero (it would be read
    until memory runs out) and an image linked to a file outside --src are failures naming the path; a linked folder
    inside the inputs' folder that stays in --src is listed like a real one, one that leaves --src is a failure."""
    src = tmp_path / "src"
    pairs(src, ["a", "b", "fifo", "zero", "outside"])
    (src / "imgs" / "fifo.png").unlink()
    os.mkfifo(src / "imgs" / "fifo.png")
    (src / "masks" / "zero.png").unlink()
    os.symlink("/dev/zero", src / "masks" / "zero.png")
    pairs(tmp_path / "elsewhere", ["outside", "far"])
    (src / "imgs" / "outside.png").unlink()
    os.symlink(tmp_path / "elsewhere" / "imgs" / "outside.png", src / "imgs" / "outside.png")
    pairs(src / "kept", ["c"])
    os.symlink(src / "kept" / "imgs", src / "imgs" / "linked")  # a folder inside --src: listed
    os.symlink(tmp_path / "elsewhere" / "imgs", src / "imgs" / "away")  # a folder outside --src: a failure
    os.symlink(src / "imgs", src / "imgs" / "loop")  # a loop: a failure
    with deadline(60):
        res = build("folder", src, tmp_path / "out", size=SIZE, images="imgs/*.png",
                    masks="masks/{stem}.png", modality="dermoscopy", name="mine")
        tree = SourceTree(src)
        assert "imgs/linked/c.png" in tree.files
        assert set(tree.unlisted) == {"imgs/away", "imgs/loop"}
    reasons = {f["source_id"]: f["reason"] for f in res.failures}
    assert "imgs/fifo.png is a FIFO (named pipe), not a regular file: not opened" in reasons["fifo"]
    assert "masks/zero.png is a link to /dev/zero" in reasons["zero"]
    assert f"outside --src {src}" in reasons["zero"]
    assert "imgs/outside.png is a link to" in reasons["outside"] and "outside --src" in reasons["outside"]
    assert "folder imgs/away/ not listed: a link to the folder" in reasons["away"]
    assert "a folder it lies in: not followed (a loop)" in reasons["loop"]
    assert sorted(r["key"] for r in map(json.loads, (res.out / "samples.jsonl").read_text().splitlines())) == \
        ["mine-a", "mine-b"]


def test_a_linked_folder_in_an_input_folder_is_listed_like_a_real_one(tmp_path):
    src = tmp_path / "src"
    pairs(src / "more", ["b", "c"])
    for kind in ("imgs", "masks"):
        (src / kind).mkdir()
        os.symlink(src / "more" / kind, src / kind / "sub")
    res = build("folder", src, tmp_path / "out", size=SIZE, images="imgs/*/*.png", masks="masks/{parent}/{name}",
                modality="dermoscopy", name="mine")
    assert res.manifest.counts["samples"] == 2 and not res.failures  # imgs/sub/b.png with masks/sub/b.png, c


def test_reads_stop_at_the_size_the_file_had(tmp_path):
    """A file that grows while read is refused, not read without end (the bound is the size at open)."""
    from medprep.prep.tree import InputRefused

    (tmp_path / "grows.png").write_bytes(b"x" * 10)
    tree = SourceTree(tmp_path)
    real = os.fstat

    def shrunk(fd: int) -> os.stat_result:  # the stat of the file before 10 more bytes were appended
        st = list(real(fd))
        st[6] = 5
        return os.stat_result(st)

    os.fstat = shrunk
    try:
        with pytest.raises(InputRefused, match="grew while it was read"):
            tree.read_stamped("grows.png")
    finally:
        os.fstat = real
    assert tree.read_stamped("grows.png")[0] == b"x" * 10


def test_files_named_beside_src_that_are_fifos_are_refused_not_read(tmp_path):
    """--split-file, --config and --groups-file that are FIFOs end in an error naming them, not a hang."""
    fifo = tmp_path / "named.pipe"
    os.mkfifo(fifo)
    src = synthetic.make("cvc-clinicdb", tmp_path / "src")
    with deadline(60):
        with pytest.raises(ValueError, match=f"--split-file {fifo}: cannot read it .*a FIFO"):
            BuildParams.of("drive", split_file=str(fifo))
        with pytest.raises(ValueError, match=f"--config {fifo}: cannot read it .*a FIFO"):
            read_recipe(fifo)
        with pytest.raises(OSError, match="named.pipe is a FIFO"):
            build("cvc-clinicdb", src, tmp_path / "out", size=SIZE, group_by="sequence", groups_file=str(fifo))


# --- 4. numbers that are not numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_a_non_finite_pixel_fails(bad):
    arr = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    arr[3, 5] = bad
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, format="TIFF")
    with pytest.raises(ConversionError, match=r"x.tif: 1 pixel is not a finite number .* at index \[3, 5\]"):
        decode(buf.getvalue(), "x.tif")


def test_volume_with_a_nan_voxel_fails_and_the_others_convert(tmp_path):
    src = s3.make_volumes(tmp_path / "src", cases=2, modality="mr")
    import nibabel as nib

    path = sorted((src / "imagesTr").glob("*.nii.gz"))[0]
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), path)
    res = build("volumes", src, tmp_path / "out", size=SIZE, modality="mr", split_rule="test")
    (failure,) = res.failures
    assert failure["files"][0].endswith(path.name) and "1 voxel is not a finite number" in failure["reason"]
    assert res.manifest.counts["samples"] > 0


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "nan"])
def test_window_options_that_are_not_finite_are_refused(tmp_path, value):
    code, text = invoke("build", "-d", "volumes", "--src", tmp_path, "--out", tmp_path / "out", "-o", "modality=ct",
                        "-o", f"window_level={value}")
    assert code != 0 and "-o window_level: expected a finite number" in text
    with pytest.raises(ValueError, match="finite numbers"):
        get_converter("volumes", modality="ct", multilabel="each", label_windows={"1": [float(value), 400]})


def test_meta_json_is_strict_json(tmp_path):
    """A header number that is not finite (an npz spacing of NaN) fails its input: meta.json never holds NaN."""
    src = tmp_path / "src"
    gts = np.zeros((3, 16, 16), np.uint8)
    gts[1, 4:9, 4:9] = 1
    s3.write_medsam_npz(src / "CT_x_a.npz", np.full((3, 16, 16), 80, np.uint8), gts, (1.0, float("nan"), 2.0))
    s3.write_medsam_npz(src / "CT_x_b.npz", np.full((3, 16, 16), 80, np.uint8), gts, (1.0, 1.0, 2.0))
    res = build("medsam-npz", src, tmp_path / "out", size=SIZE, modality="ct", split_rule="test")
    (failure,) = res.failures
    assert failure["source_id"] == "CT_x_a" and "not finite (NaN or Infinity)" in failure["reason"]
    for line in (res.out / "samples.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))


# --- 6. weak messages ------------------------------------------------------------------------------------------------

def test_an_extreme_aspect_ratio_with_longest_resize_says_why(tmp_path):
    src = tmp_path / "src"
    pairs(src, ["ok"])
    synthetic.write(src / "imgs" / "thin.png", synthetic.png(np.full((1, 20000, 3), 50, np.uint8)))
    thin = np.zeros((1, 20000), np.uint8)
    thin[0, 100:200] = 255
    synthetic.write(src / "masks" / "thin.png", synthetic.png(thin))
    res = folder_build(src, tmp_path / "out", resize="longest")
    (failure,) = res.failures
    assert failure["source_id"] == "thin"
    assert failure["reason"].startswith("the image is 20000x1 (width x height): --resize longest scales its longest "
                                        "side to 64 and leaves 0 pixels")
    assert "cv2" not in failure["reason"]


# --- 5. read what the format says ------------------------------------------------------------------------------------

def test_palette_mask_is_read_by_index_not_colour(tmp_path):
    """A paletted mask whose background index 0 is painted white (and the object index 1 black) is the same mask as
    a plain one: read by its colours it would come out inverted."""
    mask = np.zeros((16, 20), np.uint8)
    mask[4:10, 5:12] = 1
    for fmt in ("png", "gif", "bmp", "tiff"):
        src = tmp_path / fmt
        pairs(src, ["plain", "paletted"])
        im = Image.fromarray(mask, mode="P")
        im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 white, index 1 black
        buf = io.BytesIO()
        im.save(buf, format=fmt, optimize=False)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue()))), mask)
        (src / "masks" / "paletted.png").unlink()
        synthetic.write(src / "masks" / f"paletted.{fmt}", buf.getvalue())
        res = build("folder", src, tmp_path / f"out-{fmt}", size=SIZE, images="imgs/*.png", masks="masks/{stem}.*",
                    modality="dermoscopy", name="mine")
        rows = {r["source_id"]: r for r in map(json.loads, (res.out / "samples.jsonl").read_text().splitlines())}
        assert not res.failures and rows["paletted"]["foreground"] == rows["plain"]["foreground"] < 0.5, fmt


def test_dicom_series_with_a_missing_slice_fails_naming_the_gap(tmp_path):
    image, label, affine = s3.phantom()
    s3.write_dicom_series(tmp_path / "dicom" / "case_000", image, affine)
    s3.write_nifti(tmp_path / "labels" / "case_000.nii.gz", label, affine)
    (tmp_path / "dicom" / "case_000" / "IM0008.dcm").unlink()
    conv = get_converter("volumes", modality="ct", images="dicom/*/*.dcm", labels="labels/{stem}.nii.gz")
    tree = SourceTree(tmp_path)
    (rec,), _ = conv.discover(tree)
    with pytest.raises(ConversionError, match=r"not evenly spaced: IM0007.dcm and IM0009.dcm lie 5 mm apart where "
                                              r"the series' step is 2.5 mm \(a missing or duplicate slice"):
        list(conv.samples({f: tree.read(f) for f in rec.files()}, rec))


def test_4d_label_volume_is_refused_unless_a_channel_is_chosen(tmp_path):
    src = s3.make_volumes(tmp_path / "src", cases=1)
    import nibabel as nib

    path = src / "labelsTr" / "case_000.nii.gz"
    lab = nib.load(path)
    data = np.asanyarray(lab.dataobj)
    nib.save(nib.Nifti1Image(np.stack([np.zeros_like(data), data], axis=3), lab.affine), path)
    with pytest.raises(Exception, match=r"a label volume of 2 channels .* choose it with -o label_channel=N \(0..1\)"):
        build("volumes", src, tmp_path / "out", size=SIZE, modality="ct", split_rule="test")
    res = build("volumes", src, tmp_path / "out", size=SIZE, modality="ct", split_rule="test", label_channel=1)
    assert res.manifest.counts["samples"] > 0 and not res.failures


def test_jpeg_cut_short_with_an_end_marker_is_a_failure():
    """A JPEG cut mid-data whose end-of-image marker was put back decodes with its lower part flat and a libjpeg
    warning: the warning makes it a failure."""
    rng = np.random.default_rng(0)
    whole = synthetic.jpeg((rng.random((64, 80, 3)) * 255).astype(np.uint8))
    assert decode(whole, "ok.jpg").shape == (64, 80, 3)
    with pytest.raises(ConversionError, match="cut.jpg is a damaged JPEG: the decoder warned 'Corrupt JPEG data"):
        decode(whole[: len(whole) * 6 // 10] + b"\xff\xd9", "cut.jpg")


@pytest.mark.parametrize("gz", [False, True])
def test_nifti_with_a_header_extension_is_read(tmp_path, gz):
    """TotalSegmentator writes its label names into a NIfTI-1 header extension: the header parser gets the header
    and its extensions (up to vox_offset), not the first 540 bytes only."""
    import gzip

    import nibabel as nib

    from medprep.prep.volume_io import read_nibabel

    data = np.zeros((12, 10, 6), np.uint8)
    data[3:6, 2:5, 2] = 7
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]))
    names = json.dumps({str(i): f"organ_{i}" for i in range(1, 118)}).encode()  # a few KiB, past byte 540
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", names))
    blob = img.to_bytes()
    assert struct.unpack("<f", blob[108:112])[0] > 540  # the voxels start past the extension
    vol = read_nibabel(gzip.compress(blob) if gz else blob, "seg.nii.gz" if gz else "seg.nii")
    assert np.array_equal(vol.data, data) and vol.affine[2, 2] == 3.0


def test_gunzipped_stare_is_accepted(tmp_path):
    import gzip

    base = make_fake_stare(tmp_path)
    for f in sorted(base.rglob("*.ppm.gz"))[::2]:  # half of them gunzipped, as most users unpack them
        f.with_suffix("").write_bytes(gzip.decompress(f.read_bytes()))
        f.unlink()
    res = build("stare", base, tmp_path / "out", size=SIZE)
    assert res.manifest.counts["samples"] == 4 and len(res.failures) == 2  # the 2 unlabelled images, as gzipped
    assert all("image without mask" in f["reason"] for f in res.failures)


def make_fake_stare(root: Path) -> Path:
    from medprep.prep.datasets import make_fake

    return make_fake("stare", root, archives=False)


def test_hrf_field_of_view_of_a_failed_input_fails_with_it(tmp_path):
    from medprep.prep.datasets import make_fake

    base = make_fake("hrf", tmp_path)
    (base / "manual1" / "01_g.tif").unlink()
    res = build("hrf", base, tmp_path / "out", size=SIZE)
    (failure,) = res.failures
    assert failure["source_id"] == "01_g" and failure["reason"].startswith("image without mask")
    assert failure["files"] == ["images/01_g.jpg", "mask/01_g_mask.tif"]


def test_jpeg_padded_before_its_end_marker_still_converts():
    """Bytes between the last scan and the end marker (libjpeg: 'extraneous bytes before marker 0xd9') leave every
    pixel decoded: such camera files are not refused."""
    rng = np.random.default_rng(1)
    whole = synthetic.jpeg((rng.random((32, 40, 3)) * 255).astype(np.uint8))
    padded = whole[:-2] + b"\xab" * 20 + whole[-2:]  # libjpeg warns of 16 (4 it reads ahead as scan data)
    assert np.array_equal(decode(padded, "padded.jpg"), decode(whole, "whole.jpg"))
