"""Pixel work of the build: decode, normalise to RGB uint8 / binary masks, resize, deterministic encoding.

The rules shared with the readers (patch targets, longest-side size, keys) are in ``medprep.manifests.pixels``.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import isal
import numpy as np
from isal import isal_zlib
from PIL import Image

from medprep.manifests.errors import MedprepError
from medprep.manifests.pixels import longest_side

cv2.setNumThreads(1)

RESIZE_MODES = ("stretch", "longest")
INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}  # image resize
PNG_LEVEL = 1
# formats cv2 decodes faithfully; everything else (GIF, palette images, PPM, odd TIFFs) goes through PIL
_CV2_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ConversionError(MedprepError, ValueError):
    """An input that cannot be converted; the message is the reason written to failures.jsonl."""


# --max-pixels: the most pixels one decoded image (or voxels one volume) may hold, checked from the file's header
# before anything is decoded. 2^28 is a 16k x 16k image (up to 2 GiB decoded) or a 512 x 512 x 1024 CT.
MAX_PIXELS = 1 << 28
_max_pixels: ContextVar[int] = ContextVar("medprep_max_pixels", default=MAX_PIXELS)


@contextmanager
def pixel_limit(limit: int) -> Iterator[None]:
    """Within the block (in this thread), :func:`decode` and the volume readers refuse an image or volume whose
    header declares more than ``limit`` pixels (voxels); the build sets it from ``--max-pixels``."""
    token = _max_pixels.set(limit)
    try:
        yield
    finally:
        _max_pixels.reset(token)


def check_pixels(shape: tuple[int, ...], name: str, what: str = "pixels") -> None:
    """Raise ConversionError when a header's declared ``shape`` (width x height, or a volume's dimensions) holds more
    than the :func:`pixel_limit` in force: refused before decoding, never allocated."""
    count = 1
    for n in shape:
        count *= max(int(n), 1)
    limit = _max_pixels.get()
    if count > limit:
        raise ConversionError(f"{name}: its header declares {'x'.join(str(int(n)) for n in shape)} = {count} {what}, "
                              f"more than --max-pixels {limit}; not decoded (a decompression bomb, or raise "
                              f"--max-pixels if the file is genuine)")


def check_finite(arr: np.ndarray, name: str, what: str = "pixel") -> None:
    """Raise ConversionError when a float array holds NaN or infinite values (``what``: pixel, voxel): scaled to
    uint8 they would make the whole image black, so the input fails instead, naming how many and where the first
    is."""
    if arr.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(arr)
    count = int(np.count_nonzero(bad))
    if count:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        value = arr[first]
        raise ConversionError(f"{name}: {count} {what}{'s' if count > 1 else ''} {'are' if count > 1 else 'is'} not a "
                              f"finite number (the first, {value} at index {list(first)}); medprep does not guess "
                              f"what they stand for: replace them (e.g. numpy.nan_to_num) and convert again")


def _pil_open(data: bytes, name: str) -> Image.Image:
    """``data`` opened lazily (header read, nothing decoded) by the first PIL plugin that accepts it. Unlike
    ``Image.open`` this skips PIL's process-wide ``MAX_IMAGE_PIXELS`` check: the build applies --max-pixels."""
    Image.init()
    errors = []
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        ok = accept(data[:16]) if accept else True
        if not ok or isinstance(ok, str):  # a str is a plugin's warning that it cannot read this variant
            continue
        try:
            return factory(io.BytesIO(data), name)
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, struct.error) as e:
            errors.append(f"{fmt}: {e}")
    raise ConversionError(f"cannot decode {name}: not an image file PIL can identify"
                          f"{' (' + '; '.join(errors) + ')' if errors else ''}")


def check_header(data: bytes, name: str) -> str | None:
    """Read an image's header only and refuse it (ConversionError) when its size is over ``--max-pixels`` or it is
    a multi-page TIFF (whose first page alone would be converted). Returns PIL's mode of the image (``P`` for a
    paletted one), None for a plain PNG (read without PIL)."""
    if _plain_png(data):  # the usual PNG: its size is at a fixed place, no PIL parse (a tenth of a mask's decode)
        check_pixels(struct.unpack(">II", data[16:24]), name)
        return None
    with _pil_open(data, name) as im:
        check_pixels(im.size, name)
        pages = getattr(im, "n_frames", 1) if im.format == "TIFF" else 1
        mode = im.mode
    if pages > 1:
        raise ConversionError(f"{name} is a TIFF of {pages} pages; medprep converts single images and would use the "
                              f"first page only: save the page you mean as its own file")
    return mode


def _plain_png(data: bytes) -> bool:
    """A PNG whose first chunk is an intact IHDR (standard filter method) followed directly by IDAT: PIL's header
    read would accept it and report the IHDR's size without reading anything else."""
    return (len(data) >= 41 and data[:16] == b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" and data[27] == 0
            and data[37:41] == b"IDAT" and zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big"))


def _pil_decode(data: bytes, name: str, indexed: bool = False) -> np.ndarray:
    try:
        with _pil_open(data, name) as im:
            im.load()
            if indexed and im.mode in ("P", "PA"):  # a label map: its indices, whatever colours the palette shows
                return np.asarray(im.getchannel(0)).copy()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("L" if im.mode == "1" else "RGB")
            elif im.mode == "LA":
                im = im.convert("L")
            elif im.mode == "PA":
                im = im.convert("RGBA")
            return np.asarray(im).copy()
    except Exception as e:  # PIL raises many types for broken files
        raise ConversionError(f"cannot decode {name}: {e}") from None


# An image file inside a .gz is at most this large once unpacked (a 16-bit 4-channel 16k x 16k image is 2 GiB);
# anything larger is a decompression bomb, not an image.
GUNZIP_MAX = 2 << 30


def gunzip(data: bytes, name: str, limit: int = GUNZIP_MAX) -> bytes:
    """Unpack a gzip member, refusing output beyond ``limit`` bytes."""
    d = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise ConversionError(f"cannot gunzip {name}: {e}") from None
    if len(out) > limit:
        raise ConversionError(f"{name} unpacks to more than {limit} bytes: refused as a decompression bomb")
    if not d.eof:
        raise ConversionError(f"cannot gunzip {name}: the file is truncated")
    return out


BYTES_PER_PIXEL_MAX = 16  # 4 channels of 32-bit floats: what one declared pixel can take unpacked


def _gunzip_limit(data: bytes, name: str) -> int:
    """What a gzipped image may unpack to: its header's pixels (over --max-pixels refused), read from the first
    64 KiB unpacked, at most ``BYTES_PER_PIXEL_MAX`` bytes each; the same for --max-pixels pixels when the header is
    not in that prefix. Never more than ``GUNZIP_MAX``."""
    head = gunzip_head(data, name, 1 << 16)
    try:
        with _pil_open(head, name) as im:
            pixels = im.size
    except ConversionError:
        pixels = (_max_pixels.get(),)
    check_pixels(pixels, name)
    return min(GUNZIP_MAX, BYTES_PER_PIXEL_MAX * int(np.prod(pixels, dtype=np.int64)) + (1 << 20))


def gunzip_head(data: bytes, name: str, n: int) -> bytes:
    """The first ``n`` bytes (or fewer) a gzip member unpacks to, without unpacking the rest (to read a header)."""
    try:
        return zlib.decompressobj(wbits=zlib.MAX_WBITS | 16).decompress(data, n)
    except zlib.error as e:
        raise ConversionError(f"cannot gunzip {name}: {e}") from None


def decode(data: bytes, name: str, indexed: bool = False) -> np.ndarray:
    """Decode image bytes to an array (H, W) or (H, W, C) in RGB(A) order, keeping the bit depth.

    Gzipped files (``.ppm.gz``) are unpacked first; truncated PNG/JPEG files are rejected, not half-read, and so are
    images whose header declares more than ``--max-pixels`` pixels (:func:`pixel_limit`) and multi-page TIFFs.
    ``indexed`` (masks): a paletted image (PNG, GIF, BMP, TIFF) gives its palette indices (H, W), not its colours,
    so a mask whose background index 0 is painted white is not read inverted.
    """
    lname = name.lower()
    if lname.endswith(".gz"):
        data = gunzip(data, name, _gunzip_limit(data, name))
        lname = lname[:-3]
    if not data:
        raise ConversionError(f"{name} is empty (0 bytes)")
    if lname.endswith((".jpg", ".jpeg")) and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise ConversionError(f"{name} is a truncated JPEG (no end-of-image marker)")
    if lname.endswith(".png") and not data.endswith(b"IEND\xaeB`\x82"):
        raise ConversionError(f"{name} is a truncated PNG (no IEND chunk)")
    mode = check_header(data, name)
    arr = None
    if lname.endswith(_CV2_EXT) and not _is_palette_png(data) and not (indexed and mode in ("P", "PA")):
        with _c_stderr() if lname.endswith((".jpg", ".jpeg")) else nullcontext([]) as printed:
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        warned = [line for line in printed if line.startswith(_LIBJPEG_WARNINGS) and not _HARMLESS.match(line)]
        if warned:
            raise ConversionError(f"{name} is a damaged JPEG: the decoder warned {warned[0]!r} (a file cut short or "
                                  f"corrupted, which would convert with a flat or garbled part); download it again")
        if arr is not None and arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if arr is None:
        arr = _pil_decode(data, name, indexed)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ConversionError(f"{name}: unsupported array shape {arr.shape}")
    check_finite(arr, name)
    return arr


# what libjpeg prints (its default output_message, which OpenCV keeps) when it decodes a damaged file and fills
# the rest of the image in: "Corrupt JPEG data: premature end of data segment", "Premature end of JPEG file", ...
_LIBJPEG_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file", "Invalid SOS parameters",
                     "Unsupported marker type", "Warning: unknown JFIF revision", "Inconsistent progression")
# padding between the last scan and the end-of-image marker: every pixel was decoded (cameras write such files)
_HARMLESS = re.compile(r"Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9")


@contextmanager
def _c_stderr() -> Iterator[list[str]]:
    """The lines C code prints to the process's standard error (fd 2) during the block, captured through a pipe
    (its first 64 KiB; the rest is dropped, never waited for); whatever does not come from the decoder
    (``_LIBJPEG_WARNINGS``) is printed again after it. A process without fd 2 captures nothing."""
    import sys

    lines: list[str] = []
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield lines
        return
    read_end, write_end = os.pipe()
    chunks = []
    try:
        os.set_blocking(write_end, False)  # a full pipe drops output instead of blocking the decoder
        os.dup2(write_end, 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(write_end)
        while chunk := os.read(read_end, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(saved)
        os.close(read_end)
    lines += b"".join(chunks).decode("utf-8", "replace").splitlines()
    other = [line for line in lines if not line.startswith(_LIBJPEG_WARNINGS)]
    if other and sys.stderr is not None:
        print("\n".join(other), file=sys.stderr)


def _is_palette_png(data: bytes) -> bool:
    # IHDR colour type byte (offset 25) == 3 means indexed colour
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[25] == 3


def to_uint8(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """Scale any integer/float array to uint8; returns the array and the rule applied (recorded in meta)."""
    if arr.dtype == np.uint8:
        return arr, "none"
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255, "bool"
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8), "constant"
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8), f"minmax[{lo:g},{hi:g}]"


def to_rgb(arr: np.ndarray) -> tuple[np.ndarray, dict]:
    """Normalise a decoded image to RGB uint8: grey is replicated, alpha dropped, >8-bit rescaled by min-max."""
    info = {"source_channels": 1 if arr.ndim == 2 else int(arr.shape[2]), "source_dtype": str(arr.dtype)}
    arr, info["intensity"] = to_uint8(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        info["alpha_dropped"] = bool(arr[:, :, 3].min() != 255)
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGBA2RGB), info  # ~8x faster than numpy copies
    if arr.ndim == 2 or arr.shape[2] == 2:  # grey (+ alpha, ignored): replicated
        return cv2.cvtColor(np.ascontiguousarray(arr if arr.ndim == 2 else arr[:, :, 0]), cv2.COLOR_GRAY2RGB), info
    return np.ascontiguousarray(arr), info


# A mask whose values are not a clean two-level set is accepted only if it is near-binary: JPEG ringing leaves
# a few pixels away from 0 and 255 (Kvasir-SEG: 0-8 and 247-255). More mid-range pixels than this fraction means
# the file is not a mask we can interpret.
MID_FRACTION_MAX = 0.02


Box = tuple[slice, slice]  # rows, columns


def binarize(arr: np.ndarray, name: str) -> np.ndarray:
    """Turn a mask in any of the usual encodings into a bool array.

    Accepted: 0/1, 0/255, any two-level {0, v}, RGB/RGBA masks (a pixel is foreground if any colour channel is
    set; palette masks are decoded to their indices, ``decode(indexed=True)``), and JPEG-compressed masks
    (threshold at half range). Anything else raises ConversionError.
    """
    return unbox(*binarize_box(arr, name), arr.shape[:2])


def binarize_box(arr: np.ndarray, name: str) -> tuple[Box, np.ndarray]:
    """``binarize`` as (the bounding box of the foreground, the bool mask inside it); outside the box is background.

    A uint8 mask costs one pass to find the box, then work on the box only: merging the one-object masks of
    instance datasets (DSB's nuclei) costs their objects, not their frames. Same rules and errors as ``binarize``.
    """
    arr = mask_plane(arr, name)
    if arr.dtype == np.uint8 and arr.size:
        box = _nonzero_box(arr)
        crop = arr[box]
        if not crop.size:  # all background
            return box, crop > 0
        hi = crop.max()
        lo = crop.min() if crop.size == arr.size else 0  # a box smaller than the mask has background around it
        if lo == hi:
            _fail_const(name, hi)
        if lo == 0:
            fg = crop > 0
            if np.count_nonzero(fg) == np.count_nonzero(crop == hi):  # no value between 0 and the top one
                return box, fg
    return (slice(0, arr.shape[0]), slice(0, arr.shape[1])), _binarize_levels(arr, name)


def decode_mask_boxes(files: Sequence[tuple[bytes, str]]) -> Iterator[tuple[tuple[int, int], Box, np.ndarray]]:
    """``binarize_box(decode(data, name), name)`` with the mask's (height, width), for each (data, name) in order:
    same rules and errors, each raised when the iteration reaches its file.

    Plain 8-bit grey PNGs (how instance datasets store one object per file: DSB-2018's nuclei) are inflated with
    ISA-L and only the band of rows holding their foreground is unfiltered; the bands of all files of one width are
    decoded as one image and checked by whole-array reductions. A nucleus costs its rows, not its frame nor a
    decoder call. Any other file, or one in which this reading finds anything unusual, takes the general path.
    """
    done = _decode_bands([_png_band(data, name) for data, name in files])
    for i, (data, name) in enumerate(files):
        if i in done:
            yield done[i]
        else:
            arr = decode(data, name, indexed=True)
            yield arr.shape[:2], *binarize_box(arr, name)


_PNG_IEND = b"\0\0\0\0IEND\xaeB`\x82"
_GREY8_IHDR_TAIL = b"\x08\0\0\0\0"  # IHDR after the size: 8 bits, grey, deflate, standard filters, no interlace
_IDAT_CRC = zlib.crc32(b"IDAT")
_STACK_BYTES = 1 << 26  # the bands decoded in one call take at most this (beyond it, further calls)
_Band = tuple[tuple[int, int], int, np.ndarray]  # (mask height, width), first row, filtered rows (n, width + 1)


def _png_band(data: bytes, name: str) -> _Band | None:
    """The band of filtered rows of a plain 8-bit grey PNG outside which every pixel is 0 (no rows for an all-0
    image). None for anything else: other formats, chunks besides IDAT between IHDR and IEND, a CRC, zlib or size
    mismatch, an unknown filter type, a size over --max-pixels (the general path then says what is wrong)."""
    if not (name.lower().endswith(".png") and _plain_png(data) and data[24:29] == _GREY8_IHDR_TAIL
            and data.endswith(_PNG_IEND)):
        return None
    w, h = struct.unpack(">II", data[16:24])
    if not 0 < w < 1 << 23 or not 0 < h or w * h > _max_pixels.get():  # wider rows could overflow int32 row sums
        return None
    idat, at, end = [], 33, len(data) - len(_PNG_IEND)
    while at < end:
        n = int.from_bytes(data[at:at + 4], "big")
        if at + 12 + n > end or data[at + 4:at + 8] != b"IDAT":
            return None
        chunk = data[at + 8:at + 8 + n]
        if isal_zlib.crc32(chunk, _IDAT_CRC) != int.from_bytes(data[at + 8 + n:at + 12 + n], "big"):
            return None
        idat.append(chunk)
        at += 12 + n
    size = h * (w + 1)
    inflate = isal_zlib.decompressobj()
    try:
        raw = inflate.decompress(b"".join(idat), size + 1)
    except isal_zlib.error:
        return None
    if len(raw) != size or not inflate.eof or inflate.unused_data:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(h, w + 1)
    filters = rows[:, 0]
    if filters.max() > 4:
        return None
    # rows whose filtered bytes are all 0, before any other, decode to 0 whatever their filter; after the last row
    # with nonzero bytes, the first None or Sub row decodes to 0 and so do all rows after it
    marked = np.flatnonzero(cv2.reduce(rows, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0] != filters)
    if not marked.size:
        return (h, w), 0, rows[:0]
    y0, last = int(marked[0]), int(marked[-1])
    zero_after = np.flatnonzero(filters[last + 1:] <= 1)
    return (h, w), y0, rows[y0:last + 1 + int(zero_after[0]) if zero_after.size else h].copy()  # frees the rest


def _decode_bands(bands: list[_Band | None]) -> dict[int, tuple[tuple[int, int], Box, np.ndarray]]:
    """``decode_mask_boxes``'s result for the bands (by index) that are all 0 or a clean {0, v} mask whose box is
    smaller than its frame; the others are left to the general path."""
    out: dict[int, tuple[tuple[int, int], Box, np.ndarray]] = {}
    by_width: dict[int, list[int]] = {}
    for i, band in enumerate(bands):
        if band is not None:
            if len(band[2]):
                by_width.setdefault(band[0][1], []).append(i)
            else:
                out[i] = band[0], (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    groups = []  # (width, members) decoded in one call, of at most _STACK_BYTES filtered bytes (or one band)
    for w, members in by_width.items():
        group: list[int] = []
        size = 0
        for i in members:
            rows = (len(bands[i][2]) + 1) * (w + 1)
            if group and size + rows > _STACK_BYTES:
                groups.append((w, group))
                group, size = [], 0
            group.append(i)
            size += rows
        groups.append((w, group))
    for w, members in groups:
        # one image: the bands one under the other, a 0 row (filter None) before each so that its first row's prior
        # row is 0 as in its own file; deflate-stored, so the decoder only unfilters
        heights = np.array([len(bands[i][2]) for i in members])
        starts = np.cumsum(heights + 1) - heights
        stacked = np.zeros((int(starts[-1] + heights[-1]), w + 1), np.uint8)
        for i, start, n in zip(members, starts, heights):
            stacked[start:start + n] = bands[i][2]
        png = b"".join((b"\x89PNG\r\n\x1a\n", *_chunk(b"IHDR", struct.pack(">II", w, len(stacked)) + _GREY8_IHDR_TAIL),
                        *_chunk(b"IDAT", zlib.compress(stacked, 0)), _PNG_IEND))
        pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None or pixels.shape != (len(stacked), w):
            continue
        fg = pixels > 0
        cuts = starts - 1  # each band with the 0 row before it (none before the first)
        cuts[0] = 0
        ends = starts + heights
        # prefix sums of the foreground (cv2.integral, fast where numpy's and cv2's other reductions are not): the
        # nonzero pixels of each row, and of each column of each band
        below = cv2.integral(fg.view(np.uint8), sdepth=cv2.CV_32S)
        count = np.diff(below[:, -1])
        total = cv2.reduce(pixels, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0]
        top = np.maximum.reduceat(pixels.max(axis=1), cuts)
        # a clean {0, v} mask: in every row, the sum of the values is v times the count of nonzero ones
        level = np.repeat(top.astype(np.int64), np.diff(np.append(cuts, len(pixels))))
        clean = np.logical_and.reduceat(total == level * count, cuts)
        lit = np.flatnonzero(count)
        if not lit.size:
            continue
        # (for a band without foreground, skipped below, these are another band's rows)
        first = lit[np.minimum(np.searchsorted(lit, starts), lit.size - 1)]
        last = lit[np.maximum(np.searchsorted(lit, ends) - 1, 0)]
        columns = np.diff(below[ends] - below[starts], axis=1) > 0
        left, right = columns.argmax(axis=1), w - columns[:, ::-1].argmax(axis=1)
        for k, i in enumerate(members):
            (h, _), y0, _ = bands[i]
            r0, r1 = y0 + int(first[k] - starts[k]), y0 + int(last[k] - starts[k]) + 1
            if not clean[k] or top[k] == 0 or (r0, r1, left[k], right[k]) == (0, h, 0, w):
                continue  # a mask filling its frame's box is checked for a constant value by the general path
            out[i] = (h, w), (slice(r0, r1), slice(int(left[k]), int(right[k]))), fg[first[k]:last[k] + 1,
                                                                                        left[k]:right[k]]
    return out


def _nonzero_box(arr: np.ndarray) -> Box:
    """The bounding box of the nonzero pixels of a 2D uint8 array (empty slices when there are none): the rows
    from one summing pass (int32 sums, ~25% faster than ``cv2.boundingRect``), then the columns of those rows."""
    if arr.shape[1] >= 1 << 23:  # a row's sum could overflow int32
        x, y, w, h = cv2.boundingRect(np.ascontiguousarray(arr))
        return slice(y, y + h), slice(x, x + w)
    rows = np.flatnonzero(cv2.reduce(arr, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S))
    if not rows.size:
        return slice(0, 0), slice(0, 0)
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(cv2.reduce(arr[y0:y1], 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S))
    return slice(y0, y1), slice(int(cols[0]), int(cols[-1]) + 1)


def mask_box(mask: np.ndarray) -> list[int] | None:
    """The inclusive ``[x_min, y_min, x_max, y_max]`` of a bool mask's foreground (None when it has none), from
    ``_nonzero_box``: one summing pass over the rows, one over the foreground's rows."""
    rows, cols = _nonzero_box(np.ascontiguousarray(mask).view(np.uint8))
    return None if rows.stop == 0 else [cols.start, rows.start, cols.stop - 1, rows.stop - 1]


def mask_plane(arr: np.ndarray, name: str) -> np.ndarray:
    """A decoded mask as one 2D plane: grey as it is, colour as its brightest channel per pixel, alpha ignored. A
    mask drawn only in its alpha channel (colour or grey 0 everywhere, alpha varying) raises ConversionError: read
    from its colour it would be silently empty."""
    if arr.ndim != 3:
        return arr
    alpha = arr[:, :, -1]
    if arr.shape[2] in (2, 4) and not arr[:, :, :-1].any() and alpha.min() != alpha.max():
        raise ConversionError(f"{name}: the mask is drawn only in its alpha channel (colour 0 everywhere, alpha "
                              f"{alpha.min()}..{alpha.max()}); medprep reads masks from their colour or grey values: "
                              f"save the alpha channel as a grey mask (e.g. PIL: im.getchannel('A').save(...))")
    return arr[:, :, :3].max(axis=2) if arr.shape[2] >= 3 else arr[:, :, 0]


def unbox(box: Box, fg: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The mask of size ``hw`` that is ``fg`` inside ``box`` and background elsewhere (``fg`` when it fills it)."""
    if fg.shape == hw:
        return fg
    out = np.zeros(hw, bool)
    out[box] = fg
    return out


def _binarize_levels(arr: np.ndarray, name: str) -> np.ndarray:
    """``binarize`` of a 2D mask from its set of values."""
    if arr.dtype == bool:
        return arr
    if arr.size:  # the usual masks (empty, {0, v}) are settled by a few vectorised passes, without a histogram
        lo, hi = arr.min(), arr.max()
        if lo == hi:
            return np.zeros(arr.shape, bool) if hi == 0 else _fail_const(name, hi)
        if lo == 0:
            fg = arr > 0
            if np.count_nonzero(fg) == np.count_nonzero(arr == hi):  # no value between 0 and the top one
                return fg
    if arr.dtype == np.uint8:  # a histogram is much cheaper than np.unique on large masks
        hist = cv2.calcHist([np.ascontiguousarray(arr)], [0], None, [256], [0, 256]).ravel()
        values = np.flatnonzero(hist).astype(np.uint8)
    else:
        values = np.unique(arr)
    if values.size == 1:
        return np.zeros(arr.shape, bool) if values[0] == 0 else _fail_const(name, values[0])
    if values.size == 2 and values[0] == 0:
        return arr > 0
    top = 255 if arr.dtype == np.uint8 else float(values[-1])
    lo_band, hi_band = top * 0.125, top * 0.875
    if values[-1] < lo_band:
        raise ConversionError(
            f"{name}: mask holds several small labels {values.tolist()[:8]}; expected a binary mask (0/1 or 0/255)"
        )
    mid = np.count_nonzero((arr > lo_band) & (arr < hi_band)) / arr.size
    if mid <= MID_FRACTION_MAX:
        return arr > top / 2
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if values.size > 8 else "")
    raise ConversionError(
        f"{name}: mask is not binary and not a compressed binary mask: {values.size} distinct values ({shown}), "
        f"{mid:.1%} of pixels in the mid range; expected 0/1, 0/255 or a two-level mask"
    )


def _fail_const(name: str, value: object) -> np.ndarray:
    raise ConversionError(f"{name}: mask is constant {value} everywhere; expected 0 for background")


@dataclass(frozen=True)
class Geometry:
    """How an original (h, w) maps into the square output: scaled size and the valid (unpadded) region."""

    size: int
    mode: str
    src_hw: tuple[int, int]
    out_hw: tuple[int, int]  # size of the resized content before padding
    interp: str | None = None  # the image interpolation (INTERPOLATIONS); None: area when shrinking, else linear

    @classmethod
    def plan(cls, src_hw: tuple[int, int], size: int, mode: str, interp: str | None = None) -> "Geometry":
        if interp is not None and interp not in INTERPOLATIONS:
            raise ValueError(f"--interpolation {interp!r}: expected one of {', '.join(INTERPOLATIONS)}")
        if mode == "stretch":
            return cls(size, mode, src_hw, (size, size), interp)
        if mode == "longest":
            out_hw = longest_side(*src_hw, size)
            if min(out_hw) < 1:
                h, w = src_hw
                raise ConversionError(f"the image is {w}x{h} (width x height): --resize longest scales its longest "
                                      f"side to {size} and leaves {min(out_hw)} pixels across the other; an image "
                                      f"must be at most {2 * size}:1 for --size {size} (crop it, or use --resize "
                                      f"stretch)")
            return cls(size, mode, src_hw, out_hw, interp)
        raise ValueError(f"resize mode {mode!r}: expected one of {RESIZE_MODES}")

    def samples_every_pixel(self) -> bool:
        """True when no axis shrinks: the nearest-neighbour resize (``label``) then keeps every source pixel, so a
        label map's set of values is the same before and after it."""
        return self.out_hw[0] >= self.src_hw[0] and self.out_hw[1] >= self.src_hw[1]

    def interpolation(self) -> str:
        """Image interpolation: the chosen one, else area when shrinking and linear when enlarging."""
        if self.interp is not None:
            return self.interp
        return "area" if self.out_hw[0] * self.out_hw[1] < self.src_hw[0] * self.src_hw[1] else "linear"

    def _place(self, resized: np.ndarray) -> np.ndarray:
        if self.out_hw == (self.size, self.size):
            return resized
        out = np.zeros((self.size, self.size) + resized.shape[2:], resized.dtype)
        out[: self.out_hw[0], : self.out_hw[1]] = resized
        return out

    def image(self, img: np.ndarray) -> np.ndarray:
        flag = INTERPOLATIONS[self.interpolation()]
        return self._place(cv2.resize(img, self.out_hw[::-1], interpolation=flag))

    def label(self, lab: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize for masks and label maps (bool in, bool out)."""
        src = lab.view(np.uint8) if lab.dtype == bool else lab
        out = cv2.resize(src, self.out_hw[::-1], interpolation=cv2.INTER_NEAREST)
        return self._place(out.view(bool) if lab.dtype == bool else out)


def instance_map(hw: tuple[int, int], count: int, name: str, what: str = "instances") -> np.ndarray:
    """A zero uint16 instance map (0 = background) for ``count`` instances numbered from 1; ConversionError when
    they do not fit 16 bits."""
    if count > np.iinfo(np.uint16).max:
        raise ConversionError(f"{name}: {count} {what} do not fit a uint16 instance map")
    return np.zeros(hw, np.uint16)


PNG_CODEC = f"png-up-isal{isal.__version__}-l{PNG_LEVEL}"  # recorded in the manifest: it decides the bytes


def encode_png(arr: np.ndarray) -> bytes:
    """Deterministic PNG of a grey (H, W) or RGB (H, W, 3) uint8 array, or a 16-bit grey array.

    Every row uses the PNG 'Up' filter (a vectorised byte difference with the row above) and the data is deflated
    by ISA-L at level 1: about 4x faster than OpenCV's PNG writer at a similar size, and readable by any decoder.
    """
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ConversionError(f"cannot write a PNG from an array {arr.shape} {arr.dtype}")
    h, w = arr.shape[:2]
    depth = 16 if arr.dtype == np.uint16 else 8
    rows = np.ascontiguousarray(arr, ">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(h, -1)
    filtered = np.empty((h, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # filter type Up
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, depth, 2 if arr.ndim == 3 else 0, 0, 0, 0)
    return b"".join((b"\x89PNG\r\n\x1a\n", *_chunk(b"IHDR", header),
                     *_chunk(b"IDAT", isal_zlib.compress(filtered, PNG_LEVEL)), *_chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> tuple[bytes, ...]:
    """A PNG chunk as its parts (joined once by the caller: the data is not copied twice)."""
    return struct.pack(">I", len(data)) + kind, data, struct.pack(">I", isal_zlib.crc32(data, zlib.crc32(kind)))


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()
