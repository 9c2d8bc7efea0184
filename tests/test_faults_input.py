"""Hostile input (issue 9, items 11, 13, 14, 15): decompression bombs, odd file names, files outside the layout and
URLs are refused or listed as failures with their reason; every other input still converts, nothing is lost."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib

import nibabel as nib
import numpy as np
import pytest
from isal import isal_zlib
from PIL import Image
from typer.testing import CliRunner

from medprep.cli import app
from medprep.prep import build, synthetic
from medprep.prep.datasets import make_fake
from medprep.prep.imaging import ConversionError, decode

PEAK_MB = 512  # the bound on a build's peak memory when its inputs are decompression bombs


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def bomb_png(side: int = 30000) -> bytes:
    """A valid grey PNG of side x side zeros (900 MB decoded at 30000) in under 1 MB, compressed as a stream."""
    c = isal_zlib.compressobj(1)
    rows = bytes(side + 1) * 1000  # 1000 rows: filter byte + pixels
    idat = b"".join([c.compress(rows) for _ in range(side // 1000)] + [c.flush()])
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bomb_nii_gz(side: int = 1024) -> bytes:
    """A valid .nii.gz of side^3 uint8 zeros (1 GiB unpacked at 1024) in about 1 MB."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    block = bytes(1 << 24)
    parts = [c.compress(header.binaryblock + bytes(4))]
    parts += [c.compress(block) for _ in range(side ** 3 // len(block))] + [c.flush()]
    return b"".join(parts)


# The child's peak resident memory: VmHWM of its own address space. ru_maxrss is not used on Linux: it keeps the
# high-water mark of the process image it was forked from (a pytest process that imported torch: gigabytes).
CHILD = """
import json, resource, sys
from medprep.prep import build
res = build(sys.argv[1], sys.argv[2], sys.argv[3], **json.loads(sys.argv[4]))
try:
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
    peak_mb = int(hwm.split()[1]) / 1024
except OSError:  # no procfs (macOS): ru_maxrss in bytes
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"peak_mb": peak_mb, "failures": res.failures, "counts": res.manifest.counts}))
"""


def build_in_child(dataset: str, src, out, **fields) -> dict:
    """Build in a fresh Python process; its result and its own peak resident memory in MB."""
    done = subprocess.run([sys.executable, "-c", CHILD, dataset, str(src), str(out), json.dumps(fields)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def reasons(failures: list[dict]) -> dict[str, str]:
    return {f["files"][0]: f["reason"] for f in failures}


# ----------------------------------------------------------------------------------------- item 13: bombs


def test_png_bomb_pair_fails_from_its_header_within_bounded_memory(tmp_path):
    src = synthetic.make("udiat", tmp_path / "src", n=10)
    bomb = bomb_png()
    assert len(bomb) < 1 << 20
    (src / "original" / "000011.png").write_bytes(bomb)
    (src / "GT" / "000011.png").write_bytes(bomb)
    res = build_in_child("udiat", src, tmp_path / "out", size=64, split_rule="test")
    assert res["peak_mb"] < PEAK_MB, f"peak memory {res['peak_mb']:.0f} MB"
    assert res["counts"]["samples"] == 10 and res["counts"]["failures"] == 1
    why = reasons(res["failures"])["original/000011.png"]
    assert why.startswith("original/000011.png: its header declares 30000x30000 = 900000000 pixels, more than "
                          "--max-pixels 268435456")


def test_gzipped_image_bomb_is_refused_from_the_header_in_its_first_bytes():
    c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    ppm = b"".join([c.compress(b"P5 30000 30000 255\n")] + [c.compress(bytes(30000 * 1000)) for _ in range(30)]
                   + [c.flush()])
    with pytest.raises(ConversionError, match=r"^im0001.ppm.gz: its header declares 30000x30000 = 900000000 pixels"):
        decode(ppm, "im0001.ppm.gz")


@pytest.mark.parametrize("reader", ["auto", "sitk"])
def test_nifti_bomb_fails_from_its_header_within_bounded_memory(tmp_path, reader):
    src = make_fake("volumes", tmp_path / "src")
    bomb = bomb_nii_gz()
    assert len(bomb) < 2 << 20
    (src / "imagesTr" / "bomb.nii.gz").write_bytes(bomb)
    (src / "labelsTr" / "bomb.nii.gz").write_bytes(bomb)
    res = build_in_child("volumes", src, tmp_path / "out", size=64, modality="ct", reader=reader,
                         split_rule="test")
    assert res["peak_mb"] < PEAK_MB, f"peak memory {res['peak_mb']:.0f} MB"
    assert res["counts"]["converted"] == 3 and res["counts"]["failures"] == 1
    why = reasons(res["failures"])["imagesTr/bomb.nii.gz"]
    assert "imagesTr/bomb.nii.gz: its header declares 1024x1024x1024 = 1073741824 voxels, more than --max-pixels" in why


def test_nifti_gunzip_stops_at_the_size_its_header_declares(tmp_path):
    """A small header followed by far more data than it declares is refused once the declared size is passed."""
    src = make_fake("volumes", tmp_path / "src")
    header = nib.Nifti1Header()
    header.set_data_shape((8, 8, 8))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    stuffed = header.binaryblock + bytes(4) + bytes(64 << 20)
    (src / "imagesTr" / "stuffed.nii.gz").write_bytes(gzip.compress(stuffed, 1))
    (src / "labelsTr" / "stuffed.nii.gz").write_bytes((src / "labelsTr" / "case_000.nii.gz").read_bytes())
    res = build("volumes", src, tmp_path / "out", size=64, modality="ct", split_rule="test")
    assert "imagesTr/stuffed.nii.gz unpacks to more than" in reasons(res.failures)["imagesTr/stuffed.nii.gz"]
    assert res.manifest.counts["converted"] == 3


def test_max_pixels_applies_to_every_volume_reader_and_is_validated(tmp_path):
    src = make_fake("volumes", tmp_path / "src")
    res = build("volumes", src, tmp_path / "out", size=64, modality="ct", reader="sitk", max_pixels=10**9,
                allow_empty_split=True)
    assert res.manifest.params["max_pixels"] == 10**9 and not res.failures
    with pytest.raises(Exception, match=r"imagesTr/case_000.nii.gz: its header declares \d+x\d+x\d+ = \d+ voxels, "
                                        r"more than --max-pixels 1000"):
        build("volumes", src, tmp_path / "out2", size=64, modality="ct", reader="sitk", max_pixels=1000)
    done = CliRunner().invoke(app, ["build", "-d", "udiat", "--src", str(src), "--out", str(tmp_path / "o"),
                                    "--max-pixels", "0"])
    assert done.exit_code == 2 and "--max-pixels 0: expected a whole number of pixels >= 1" in done.output


# ----------------------------------------------------------------------------------- item 14: odd names


def _bad_name(folder, name: bytes):
    return os.path.join(os.fsencode(folder), name)


def test_non_utf8_file_name_is_a_failure_shown_escaped(tmp_path):
    src = synthetic.make("udiat", tmp_path / "src", n=10)
    for sub in ("original", "GT"):
        with open(_bad_name(src / sub, b"bad\xff.png"), "wb") as f:
            f.write((src / sub / "000003.png").read_bytes())
    res = build("udiat", src, tmp_path / "out", size=64)
    assert res.manifest.counts["samples"] == 10 and res.manifest.counts["inputs"] == 12
    rows = [json.loads(line) for line in (res.out / "failures.jsonl").read_bytes().decode("utf-8").splitlines()]
    assert sorted(r["files"][0] for r in rows) == ["GT/bad\\xff.png", "original/bad\\xff.png"]
    assert all("its name is not valid UTF-8" in r["reason"] and r["source_id"] == "bad\\xff" for r in rows)
    samples = [json.loads(x) for x in (res.out / "samples.jsonl").read_text("utf-8").splitlines()]
    assert len(samples) == 10
    assert "bad\\xff" in res.summary()


def test_non_utf8_src_and_out_folders_build_and_are_recorded_escaped(tmp_path):
    made = synthetic.make("udiat", tmp_path / "src", n=10)
    top = os.fsdecode(_bad_name(tmp_path, b"caf\xe9"))
    os.rename(made.parent, top)
    out = os.fsdecode(_bad_name(tmp_path, b"out\xff"))
    res = build("udiat", os.path.join(top, made.name), out, size=64, command=["medprep", "build", "--src", top])
    assert res.manifest.counts["samples"] == 10 and not res.failures
    written = {p.name: p.read_bytes().decode("utf-8") for p in res.out.iterdir() if p.suffix != ".tar"}
    assert "caf\\\\xe9" in written["card.json"] and "caf\\xe9" in written["README.md"]


def test_non_utf8_member_name_in_an_archive_is_a_failure(tmp_path):
    src = synthetic.make("udiat", tmp_path / "src", n=10)
    with open(_bad_name(src / "original", b"caf\xe9.png"), "wb") as f:
        f.write((src / "original" / "000003.png").read_bytes())
    archive = tmp_path / "udiat.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tf:
        tf.add(src, arcname=src.name)
    res = build("udiat", archive, tmp_path / "out", size=64)
    assert res.manifest.counts["samples"] == 10
    assert [f["files"] for f in res.failures] == [["original/caf\\xe9.png"]]


# ------------------------------------------------------------------------------ item 15: outside the layout


def test_every_file_in_the_layout_is_an_input_or_a_counted_failure(tmp_path):
    src = synthetic.make("udiat", tmp_path / "src", n=10)
    image = (src / "original" / "000003.png").read_bytes()
    (src / "original" / "000011.PNG").write_bytes(image)
    buf = io.BytesIO()
    Image.open(io.BytesIO(image)).save(buf, "JPEG")
    (src / "original" / "000012.jpg").write_bytes(buf.getvalue())
    (src / "original" / "extra").mkdir()
    (src / "original" / "extra" / "000013.png").write_bytes(image)
    (src / "original" / "000014.png ").write_bytes(image)
    for side in ("original/LICENSE.txt", "original/Thumbs.db", "GT/ATTRIBUTION.txt", "GT/.DS_Store"):
        (src / side).write_bytes(b"not an input")
    res = build("udiat", src, tmp_path / "out", size=64)
    c = res.manifest.counts
    assert c["inputs"] == 14 and c["samples"] == 10 and c["failures"] == 4
    assert c["inputs"] == c["samples"] + c["failures"]
    assert reasons(res.failures) == {
        "original/000011.PNG": "unexpected file original/000011.PNG: extension .PNG differs in case from the inputs' "
                               ".png in original/ (names are case-sensitive); rename it to convert it",
        "original/000012.jpg": "unexpected file original/000012.jpg: extension .jpg, but the udiat inputs in "
                               "original/ are .png; convert or remove it",
        "original/extra/000013.png": "unexpected file original/extra/000013.png: in the subfolder extra/ of "
                                     "original/, where the udiat inputs are files directly in original/; move it up "
                                     "or remove it",
        "original/000014.png ": "unexpected file original/000014.png : its name begins or ends with a space; rename "
                                "it to '000014.png' to convert it",
    }
    # every file under the layout's folders: converted (its sha256 recorded), a failure, or a declared side file
    converted = {f for line in (res.out / "samples.jsonl").read_text().splitlines() for f in json.loads(line)["sha256"]}
    failed = {f for x in res.failures for f in x["files"]}
    listed = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert listed - converted - failed == {"original/LICENSE.txt", "original/Thumbs.db", "GT/ATTRIBUTION.txt"}


def test_alpha_only_mask_is_a_failure_not_an_empty_mask(tmp_path):
    src = synthetic.make("udiat", tmp_path / "src", n=10)
    mask = np.asarray(Image.open(src / "GT" / "000004.png"))
    rgba = np.zeros((*mask.shape[:2], 4), np.uint8)
    rgba[:, :, 3] = mask if mask.ndim == 2 else mask[:, :, 0]
    Image.fromarray(rgba, "RGBA").save(src / "GT" / "000004.png")
    res = build("udiat", src, tmp_path / "out", size=64)
    assert res.manifest.counts["samples"] == 9
    why = reasons(res.failures)["original/000004.png"]
    assert why.startswith("GT/000004.png: the mask is drawn only in its alpha channel (colour 0 everywhere, alpha "
                          "0..255)")


def test_multi_page_tiff_is_a_failure_naming_its_page_count(tmp_path):
    src = synthetic.make("drive", tmp_path / "src")
    path = src / "training" / "images" / "21_training.tif"
    page = Image.open(path)
    page.save(path, save_all=True, append_images=[page.copy() for _ in range(29)])
    res = build("drive", src, tmp_path / "out", size=64)
    why = reasons(res.failures)["training/images/21_training.tif"]
    assert why.startswith("training/images/21_training.tif is a TIFF of 30 pages; medprep converts single images")
    assert res.manifest.counts["failures"] == 1 and res.manifest.counts["samples"] == res.manifest.counts["inputs"] - 1


# ------------------------------------------------------------------------------------------- item 11: URLs


@pytest.mark.usefixtures("collect_clients")  # object-store clients (conftest)
@pytest.mark.parametrize("option, url", [("--out", "s3://bucket/x"), ("--src", "gs://bucket/src")])
def test_schemed_paths_are_refused_and_create_no_local_folder(tmp_path, monkeypatch, option, url):
    """A --src URL is refused; an --out URL is an object store (issue 23), here one without credentials (refused
    before any request is sent): one error line naming the URL either way, and no local folder."""
    src = synthetic.make("udiat", tmp_path / "data", n=10)
    monkeypatch.chdir(tmp_path)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "FSSPEC_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    given = {"--src": str(src), "--out": "shards", option: url}
    done = CliRunner().invoke(app, ["build", "-d", "udiat", "--src", given["--src"], "--out", given["--out"]])
    assert done.exit_code == 2
    assert done.output.startswith("error: ") and len(done.output.strip().splitlines()) == 1, done.output
    if option == "--src":
        assert f"{option} {url}: " in done.output and "copy it down first" in done.output
    else:
        assert url in done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no ./s3:, ./hf:, ./gs: and no ./shards


def test_file_urls_are_local_paths(tmp_path, monkeypatch):
    src = synthetic.make("udiat", tmp_path / "data", n=10)
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["build", "-d", "udiat", "--src", src.as_uri(), "--out",
                                    (tmp_path / "shards").as_uri(), "--size", "64"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "shards" / "udiat" / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "shards"]
