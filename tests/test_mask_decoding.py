"""The band decoder of one-object mask PNGs (``decode_mask_boxes``) against the general path (decode, then
``binarize_box``): same boxes, pixels and errors, on every PNG row filter, on damaged files and in mixed batches."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from medprep.prep.imaging import (ConversionError, _decode_bands, _png_band, binarize_box, decode,
                                  decode_mask_boxes, pixel_limit)

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def _filter_row(row: np.ndarray, prior: np.ndarray, kind: int) -> np.ndarray:
    """PNG filter ``kind`` (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) of one 8-bit grey row."""
    x, b = row.astype(np.int32), prior.astype(np.int32)
    a = np.concatenate([[0], x[:-1]])
    c = np.concatenate([[0], b[:-1]])
    if kind == 4:
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    else:
        pred = [np.zeros_like(x), a, b, (a + b) // 2][kind]
    return ((x - pred) % 256).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(arr: np.ndarray, filters: np.ndarray, idat_parts: int = 1, tail: bytes = b"",
             before_iend: bytes = b"") -> bytes:
    """An 8-bit grey PNG written byte for byte: row r filtered with ``filters[r]``, the zlib stream (plus ``tail``)
    cut into ``idat_parts`` IDAT chunks, ``before_iend`` (whole chunks) between the last IDAT and IEND. A filter
    type over 4 (invalid) writes the row unfiltered under that type byte."""
    h, w = arr.shape
    prior = np.zeros(w, np.uint8)
    raw = b""
    for r in range(h):
        kind = int(filters[r])
        raw += bytes([kind]) + (_filter_row(arr[r], prior, kind) if kind <= 4 else arr[r]).tobytes()
        prior = arr[r]
    stream = zlib.compress(raw, 6) + tail
    cut = np.linspace(0, len(stream), idat_parts + 1).astype(int)
    idat = b"".join(_chunk(b"IDAT", stream[cut[k]:cut[k + 1]]) for k in range(idat_parts))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + idat
            + before_iend + _chunk(b"IEND", b""))


def outcome(files: list[tuple[bytes, str]], band: bool) -> list:
    """Per file (mask hw, box, fg) or the error message, and the files after the first error left out."""
    out: list = []
    if band:
        try:
            out.extend(decode_mask_boxes(files))
        except ConversionError as e:
            out.append(str(e))
        return out
    for data, name in files:
        try:
            arr = decode(data, name)
            out.append((arr.shape[:2], *binarize_box(arr, name)))
        except ConversionError as e:
            out.append(str(e))
            break
    return out


def assert_same(files: list[tuple[bytes, str]]) -> None:
    new, ref = outcome(files, True), outcome(files, False)
    assert len(new) == len(ref)
    for k, (a, b) in enumerate(zip(new, ref)):
        if isinstance(b, str):
            assert a == b, files[k][1]
        else:
            assert not isinstance(a, str), (files[k][1], a)
            assert a[0] == b[0] and a[1] == b[1], files[k][1]
            assert a[2].dtype == bool and a[2].shape == b[2].shape and np.array_equal(a[2], b[2]), files[k][1]


def random_mask(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """An object mask in one of the shapes masks come in: a blob of one value, several, one pixel, one touching
    the frame, a near-binary one with a few mid values, a blob on a faint background, or nothing."""
    m = np.zeros(hw, np.uint8)
    kind = rng.integers(0, 8)
    value = int(rng.choice([1, 77, 255]))
    h, w = hw
    if kind <= 2:
        for _ in range(int(kind) + 1):
            cv2.ellipse(m, (int(rng.integers(0, w)), int(rng.integers(0, h))),
                        (int(rng.integers(1, max(2, w // 3))), int(rng.integers(1, max(2, h // 3)))),
                        float(rng.uniform(0, 180)), 0, 360, value, -1)
    elif kind == 3:
        m[rng.integers(0, h), rng.integers(0, w)] = value
    elif kind == 4:  # touches all four sides: the general path checks it for a constant value
        m[:, :] = value
        m[rng.integers(0, h), rng.integers(0, w)] = 0
    elif kind == 5:
        cv2.circle(m, (w // 2, h // 2), max(1, min(hw) // 3), 255, -1)
        m[rng.random(hw) < 0.01] = 128
    elif kind == 6:
        m[:] = 3
        cv2.circle(m, (w // 2, h // 2), max(1, min(hw) // 3), 250, -1)
    return m


@pytest.mark.parametrize("stack_bytes", [1 << 26, 300])
def test_band_decoder_matches_the_general_path_on_every_row_filter(stack_bytes, monkeypatch):
    """Random masks, random filter per row (Average and Paeth included), batches mixing widths, decoded in one call
    or (a small stack limit) in several: every file gives the general path's box and pixels, and most go through
    the band decoder (it is what is tested)."""
    monkeypatch.setattr("medprep.prep.imaging._STACK_BYTES", stack_bytes)
    rng = np.random.default_rng(0)
    banded = total = 0
    for batch in range(60):
        widths = rng.choice([1, 2, 7, 31, 64], size=2)
        files = []
        for j in range(int(rng.integers(1, 12))):
            hw = (int(rng.integers(1, 40)), int(widths[j % 2]))
            m = random_mask(rng, hw)
            files.append((grey_png(m, rng.integers(0, 5, hw[0]), idat_parts=int(rng.integers(1, 4))),
                          f"b{batch}/m{j}.png"))
        assert_same(files)
        banded += len(_decode_bands([_png_band(data, name) for data, name in files]))
        total += len(files)
    assert banded >= total // 2


def test_band_decoder_on_files_other_writers_made():
    """OpenCV's and PIL's PNGs (their own filter choices) and an 8-bit grey mask of the real DSB-2018 shape."""
    from io import BytesIO

    from PIL import Image

    rng = np.random.default_rng(1)
    files = []
    for j in range(20):
        m = random_mask(rng, (int(rng.integers(20, 90)), 96))
        files.append((cv2.imencode(".png", m)[1].tobytes(), f"cv/{j}.png"))
        buf = BytesIO()
        Image.fromarray(m).save(buf, "PNG")
        files.append((buf.getvalue(), f"pil/{j}.png"))
    assert_same([f for f in files if "constant" not in f[1]])


def test_damaged_and_unusual_files_take_the_general_path():
    """A flipped byte (bad CRC), a flipped byte with its CRC fixed (a broken or wrong zlib stream), data after the
    zlib stream, too few rows, an ancillary chunk, an unknown row filter type, another colour type, a JPEG: same
    result or error as the general path, never a different mask."""
    rng = np.random.default_rng(2)
    m = np.zeros((30, 40), np.uint8)
    cv2.circle(m, (20, 15), 6, 255, -1)
    good = grey_png(m, rng.integers(0, 5, 30))
    at = good.index(b"IDAT") + 4
    flipped = bytearray(good)
    flipped[at + 5] ^= 0x40
    n = int.from_bytes(good[at - 8:at - 4], "big")
    refixed = bytes(flipped[:at + n]) + struct.pack(">I", zlib.crc32(bytes(flipped[at - 4:at + n]))) + good[at + n + 4:]
    cases = {
        "bad-crc": bytes(flipped),
        "bad-stream": refixed,
        "trailing": grey_png(m, rng.integers(0, 5, 30), tail=b"\0junk"),
        "short": good[:8] + _chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 31, 8, 0, 0, 0, 0)) + good[33:],
        "text-chunk": grey_png(m, rng.integers(0, 5, 30), before_iend=_chunk(b"tEXt", b"k\0v")),
        "bad-filter": grey_png(m, np.where(np.arange(30) == 12, 7, rng.integers(0, 5, 30))),
        "rgb": cv2.imencode(".png", np.dstack([m, m, m]))[1].tobytes(),
        "jpeg": cv2.imencode(".jpg", m)[1].tobytes(),
    }
    for label, data in cases.items():
        name = f"{label}.jpg" if label == "jpeg" else f"{label}.png"
        assert _png_band(data, name) is None, label
        assert_same([(good, "good.png"), (data, name), (good, "again.png")])


def test_errors_come_in_file_order():
    """A constant mask (an error) after a good one and before another: the first is returned, then the error of
    the second, as the general path would; a mask over --max-pixels is refused before it is inflated."""
    m = np.zeros((20, 30), np.uint8)
    m[5:9, 4:10] = 255
    constant = np.full((20, 30), 255, np.uint8)
    files = [(grey_png(m, np.full(20, 4)), "a.png"), (grey_png(constant, np.zeros(20)), "b.png"),
             (grey_png(m, np.full(20, 3)), "c.png")]
    got = decode_mask_boxes(files)
    assert next(got)[1] == (slice(5, 9), slice(4, 10))
    with pytest.raises(ConversionError, match="b.png"):
        next(got)
    assert_same(files)
    with pixel_limit(599):
        assert _png_band(files[0][0], "a.png") is None
        with pytest.raises(ConversionError, match="more than --max-pixels 599"):
            next(decode_mask_boxes(files[:1]))


def test_real_dsb_nucleus_masks():
    """Every nucleus PNG of the real DSB-2018 cases, one batch per case, as the general path reads them."""
    cases = sorted(REAL.glob("stage1_train/*/masks"))
    if not cases:
        pytest.skip(f"no real data: {REAL / 'stage1_train'} is absent (the real sample files are not shipped)")
    for masks in cases:
        files = [(f.read_bytes(), str(f)) for f in sorted(masks.glob("*.png"))]
        assert_same(files)
        assert len(_decode_bands([_png_band(data, name) for data, name in files])) == len(files)
