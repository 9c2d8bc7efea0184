"""Bad input: every file ends up converted or listed in failures.jsonl with its reason; --strict is fatal."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from medprep.prep import BuildError, build, synthetic
from medprep.prep.imaging import ConversionError, binarize, decode


@pytest.fixture
def broken_udiat(tmp_path):
    src = synthetic.make("udiat", tmp_path / "src", n=10)
    img1 = (src / "original" / "000001.png").read_bytes()
    (src / "original" / "000001.png").write_bytes(img1[: len(img1) // 2])  # truncated
    (src / "GT" / "000002.png").unlink()  # image without mask
    (src / "GT" / "000099.png").write_bytes((src / "GT" / "000003.png").read_bytes())  # mask without image
    Image.new("L", (10, 12)).save(src / "GT" / "000004.png")  # mask of another size
    grad = np.tile(np.linspace(0, 255, 76).astype(np.uint8), (60, 1))
    Image.fromarray(grad).save(src / "GT" / "000005.png")  # not a binary mask
    (src / "original" / "000006.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20 + b"IEND\xaeB`\x82")
    (src / "original" / "000007.png").write_bytes(b"")  # empty file
    return tmp_path


def test_failures_are_listed_with_reasons_and_the_run_goes_on(broken_udiat):
    result = build("udiat", broken_udiat / "src", broken_udiat / "out", size=64)
    counts = result.manifest.counts
    reasons = {f["source_id"]: f["reason"] for f in result.failures}
    assert counts["inputs"] == 11 and counts["samples"] == 4 and counts["failures"] == 7
    assert counts["inputs"] == counts["samples"] + counts["failures"]
    assert "truncated PNG" in reasons["000001"]
    assert "image without mask" in reasons["000002"] and "GT/000002.png" in reasons["000002"]
    assert reasons["000099"] == "mask without image"
    assert "10x12" in reasons["000004"] and "76x60" in reasons["000004"]
    assert "not binary" in reasons["000005"]
    assert "cannot decode" in reasons["000006"]
    assert "empty" in reasons["000007"]
    rows = [json.loads(x) for x in (result.out / "failures.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and all(r["files"] and r["reason"] and r["stage"] for r in rows)
    assert "7 failures" in result.summary() and "11 inputs found" in result.summary()


def test_strict_publishes_nothing(broken_udiat):
    out = broken_udiat / "out" / "udiat"
    with pytest.raises(BuildError, match="--strict: 7 input"):
        build("udiat", broken_udiat / "src", out.parent, size=64, strict=True)
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))


def test_truncated_jpeg_is_a_failure(tmp_path):
    src = synthetic.make("isic2018", tmp_path / "src", n=(3, 0, 0))
    jpg = src / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000001.jpg"
    jpg.write_bytes(jpg.read_bytes()[:-200])
    result = build("isic2018", tmp_path / "src", tmp_path / "out", size=64)
    assert [f["source_id"] for f in result.failures] == ["ISIC_0000001"]
    assert "truncated JPEG" in result.failures[0]["reason"]


def test_missing_src(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build("drive", tmp_path / "nope", tmp_path / "out", size=64)


def _png(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, **kw).save(buf, format="PNG")
    return buf.getvalue()


MASK = np.zeros((40, 50), bool)
MASK[10:30, 5:25] = True


@pytest.mark.parametrize("encoding", ["0/1", "0/255", "0/128", "rgb", "rgba", "palette", "jpeg", "bool-1bit", "16bit"])
def test_binarize_encodings(encoding):
    u = MASK.astype(np.uint8)
    if encoding == "0/1":
        data = _png(u)
    elif encoding == "0/255":
        data = _png(u * 255)
    elif encoding == "0/128":
        data = _png(u * 128)
    elif encoding == "rgb":
        data = _png(np.dstack([u * 255, u * 0, u * 0]))
    elif encoding == "rgba":
        data = _png(np.dstack([u * 255] * 3 + [np.full_like(u, 255)]))
    elif encoding == "palette":
        im = Image.fromarray(u, mode="L").convert("P")
        im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        data = buf.getvalue()
    elif encoding == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(u * 255).save(buf, format="JPEG", quality=75)
        data = buf.getvalue()
        assert len(np.unique(decode(data, "m.jpg"))) > 2  # really lossy
    elif encoding == "bool-1bit":
        buf = io.BytesIO()
        Image.fromarray(MASK).save(buf, format="PNG")
        data = buf.getvalue()
    else:
        data = _png(u.astype(np.uint16) * 1000)
    name = "m.jpg" if encoding == "jpeg" else "m.png"
    np.testing.assert_array_equal(binarize(decode(data, name), name), MASK)


def test_binarize_rejects_label_maps_and_images():
    labels = MASK.astype(np.uint8) + (np.arange(50) > 40).astype(np.uint8)[None, :] * 2
    with pytest.raises(ConversionError, match="labels"):
        binarize(labels, "labels.png")
    with pytest.raises(ConversionError, match="not binary"):
        binarize(np.tile(np.arange(256, dtype=np.uint8), (10, 1)), "gradient.png")
    with pytest.raises(ConversionError, match="constant"):
        binarize(np.full((4, 4), 255, np.uint8), "white.png")


@pytest.mark.parametrize("kind", ["grey", "grey16", "rgba", "palette", "la", "rgb"])
def test_images_are_normalized_to_rgb_uint8(kind):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    if kind == "grey":
        data, expect = _png(rgb[..., 0]), np.repeat(rgb[..., :1], 3, axis=2)
    elif kind == "grey16":
        g = rgb[..., 0].astype(np.uint16) * 100 + 500
        data = _png(g)
        lo, hi = g.min(), g.max()
        expect = np.repeat(np.round((g - lo) * (255 / (hi - lo))).astype(np.uint8)[..., None], 3, axis=2)
    elif kind == "rgba":
        data, expect = _png(np.dstack([rgb, np.full((20, 30), 255, np.uint8)])), rgb
    elif kind == "palette":
        im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        data, expect = buf.getvalue(), np.asarray(im.convert("RGB"))
    elif kind == "la":
        data = _png(np.dstack([rgb[..., 0], np.full((20, 30), 255, np.uint8)]))
        expect = np.repeat(rgb[..., :1], 3, axis=2)
    else:
        data, expect = _png(rgb), rgb
    from medprep.prep.imaging import to_rgb

    out, info = to_rgb(decode(data, f"{kind}.png"))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, expect)
    assert info["source_dtype"] == ("uint16" if kind == "grey16" else "uint8")


def test_gunzip_is_capped_and_checks_truncation():
    import gzip

    from medprep.prep.imaging import gunzip

    bomb = gzip.compress(b"\0" * 5_000_000)
    assert len(bomb) < 10_000
    with pytest.raises(ConversionError, match="decompression bomb"):
        gunzip(bomb, "im0001.ppm.gz", limit=1_000_000)
    assert gunzip(bomb, "x.gz") == b"\0" * 5_000_000
    with pytest.raises(ConversionError, match="truncated"):
        gunzip(bomb[:-20], "x.gz")
