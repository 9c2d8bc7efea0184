"""``medprep preview``: a contact sheet (one PNG) of a built dataset or a teacher store, drawn with Pillow.

A built dataset: per sample its image beside the same image with the mask filled in colour, the patch32 grid (faint
lines, the outline of its positive cells), the instance outlines (``inst.png``, DSB-2018) and the field of view
(``fov.png``, DRIVE) where the sample has them; a label strip gives the key, split, modality, source size and
foreground fraction. A teacher store: per sample its source image beside the embedding projected to RGB by PCA (the
three main components of the run's shown samples; padding in grey), or the embedding alone when the dataset it was
cached from cannot be opened or no longer holds the keys the run was cached from.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medprep.manifests import BuiltDataset, ShardIndex
from medprep.manifests.card import kind_of
from medprep.manifests.features import FeatureReader, runs
from medprep.manifests.runattrs import RunSchemaError

TILE = 256  # side of one panel in pixels
GAP = 10
COLUMNS = 4  # tiles (image + overlay) per row
FONT_SIZE = 13
MASK_ALPHA = 0.45
COLOURS = {"mask": (255, 48, 48), "patch32 positive cells": (255, 214, 0), "instance outlines": (0, 224, 255),
           "field of view": (64, 255, 64)}
GRID = (255, 255, 255, 60)  # patch32 grid lines (RGBA)
BACKGROUND, TEXT, PADDING = (28, 28, 28), (236, 236, 236), (72, 72, 72)
ENTRIES = ("image.png", "mask.png", "patch32.npy", "inst.png", "fov.png", "meta.json")
PCA_CELLS = 50_000  # embedding cells the PCA is fitted on, at most
MAX_TILE = 2048  # largest --tile (pixels)
MAX_SHEET_PIXELS = 1 << 27  # largest sheet (panels only): about 400 MB of RGB


@dataclass(frozen=True)
class Tile:
    """Where one sample is on the sheet: boxes ``(x0, y0, x1, y1)`` of its left panel (the image; None when a
    teacher run's source image is unavailable), right panel (overlay or embedding) and label strip."""

    key: str
    split: str | None
    run: str | None
    left: tuple[int, int, int, int] | None
    right: tuple[int, int, int, int]
    label: tuple[int, int, int, int]


@dataclass
class Sheet:
    """A written contact sheet."""

    out: Path
    kind: str  # "dataset" or "teacher-store"
    size: tuple[int, int]
    tiles: list[Tile]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.out}: {len(self.tiles)} samples of a {self.kind} ({self.size[0]} x {self.size[1]} px)"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


@dataclass
class _Panel:
    """One sample to draw: its left image (or None), right image and label lines."""

    key: str
    split: str | None
    run: str | None
    left: Image.Image | None
    right: Image.Image
    lines: list[str]


def preview(path: str, out: str | Path, n: int = 16, split: str | None = None, seed: int = 0,
            run: str | None = None, tile: int = TILE) -> Sheet:
    """Draw ``n`` random samples (seeded by ``seed``) of the built dataset or teacher store at ``path`` into the PNG
    ``out``. ``split`` picks a dataset's split (default: all); ``run`` a store's run (default: all finished ones)."""
    if n < 1 or not 32 <= tile <= MAX_TILE:
        raise ValueError(f"--n {n} and --tile {tile}: expected at least 1 sample and 32 to {MAX_TILE} pixels")
    if 2 * n * tile * tile > MAX_SHEET_PIXELS:
        raise ValueError(f"--n {n} samples of --tile {tile} pixels make a sheet of about {2 * n * tile * tile:,} "
                         f"pixels, more than {MAX_SHEET_PIXELS:,}: lower --n or --tile")
    kind = kind_of(path)
    if kind == "dataset":
        if run is not None:
            raise ValueError(f"--run {run!r} applies to teacher stores; {path} is a built dataset (use --split)")
        title, legend, panels, notes = _dataset_panels(BuiltDataset(path), n, split, seed, tile)
    else:
        if split is not None:
            raise ValueError(f"--split {split!r} applies to built datasets; {path} is a teacher store (use --run)")
        title, legend, panels, notes = _store_panels(path, n, run, seed, tile)
    image, tiles = _compose(title, legend, panels, tile)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return Sheet(out, kind, image.size, tiles, notes)


# -- built datasets -----------------------------------------------------------------------------------------------
def _dataset_panels(ds: BuiltDataset, n: int, split: str | None, seed: int, side: int
                    ) -> tuple[str, list[tuple[str, tuple[int, int, int] | None]], list[_Panel], list[str]]:
    rows = list(ds.samples(split))
    if not rows:
        raise ValueError(f"{ds.root} has no samples{f' in split {split!r}' if split else ''}; its splits are "
                         f"{', '.join(ds.manifest.splits()) or 'none'}")
    picked = sorted(np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False))
    indexes: dict[str, ShardIndex] = {}
    panels, seen = [], set()
    for i in picked:
        row = rows[int(i)]
        if row["shard"] not in indexes:
            indexes[row["shard"]] = ds.index_shard(row["shard"])
        index = indexes[row["shard"]]
        raw = ds.fetch(row["shard"], index, index.position(row["key"]), ENTRIES)
        sample = _decode(raw)
        seen.update(k for k in ("inst", "fov") if k in sample)
        meta = sample["meta"]
        image = _fit(Image.fromarray(sample["image"]), side)
        overlay = _overlay(image, sample)
        h, w = meta.get("original_hw", ("?", "?"))
        extra = (f" · {row['instances']} instances" if "instances" in row else "") + (" · FOV" if "fov" in sample
                                                                                     else "")
        lines = [row["key"], f"{row['split']} · {meta.get('modality')} (id {meta.get('modality_id')}) · source "
                             f"{h}x{w} · fg {meta.get('foreground', 0):.3f}{extra}"]
        panels.append(_Panel(row["key"], row["split"], None, image, overlay, lines))
    m = ds.manifest
    title = (f"{ds.root}: {m.dataset} ({m.modality}), {len(panels)} of {len(rows)} samples"
             f"{f' of split {split}' if split else ''}, seed {seed}, generation {m.generation}")
    names = ["mask", "patch32 positive cells"] + [k for k, f in (("instance outlines", "inst"),
                                                                 ("field of view", "fov")) if f in seen]
    return title, [(k, COLOURS[k]) for k in names], panels, []


def _decode(raw: dict[str, Any]) -> dict[str, Any]:
    """The entries of one sample as arrays (``image``, ``mask``, optional ``patch32``, ``inst``, ``fov``) and
    ``meta``."""
    out: dict[str, Any] = {"meta": json.loads(raw["meta.json"])}
    for name in ("image", "mask", "inst", "fov"):
        if f"{name}.png" in raw:
            with Image.open(io.BytesIO(raw[f"{name}.png"])) as im:
                out[name] = np.asarray(im.convert("RGB") if name == "image" else im)
    if "patch32.npy" in raw:
        out["patch32"] = np.load(io.BytesIO(raw["patch32.npy"]))
    return out


def _fit_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """``(width, height)`` scaled to fit a ``side`` x ``side`` box, aspect ratio kept."""
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _fit(image: Image.Image, side: int) -> Image.Image:
    """``image`` resized (smoothly) to fit a ``side`` x ``side`` box, aspect ratio kept."""
    return image.resize(_fit_size(image.size, side), Image.Resampling.BILINEAR)


def _labels_at(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label or mask array resized to ``size`` (w, h) with nearest neighbours."""
    return np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST))


def _edges(labels: np.ndarray) -> np.ndarray:
    """The pixels of each labelled region (label > 0) on its border with another label, the background or the
    image's edge (so a region that covers the whole image still shows)."""
    p = np.pad(labels, 1)
    e = np.zeros(p.shape, bool)
    e[:, :-1] |= p[:, :-1] != p[:, 1:]
    e[:-1, :] |= p[:-1, :] != p[1:, :]
    e[:, 1:] |= p[:, :-1] != p[:, 1:]
    e[1:, :] |= p[:-1, :] != p[1:, :]
    return (e & (p > 0))[1:-1, 1:-1]


def _overlay(image: Image.Image, sample: dict[str, Any]) -> Image.Image:
    """``image`` (already fitted to the panel) with the mask filled in colour, the patch32 grid and the outlines of
    its positive cells, the instance outlines and the field of view."""
    size = image.size
    px = np.asarray(image, dtype=np.float32).copy()
    mask = _labels_at(sample["mask"] > 0, size) > 0
    px[mask] = px[mask] * (1 - MASK_ALPHA) + np.float32(COLOURS["mask"]) * MASK_ALPHA
    out = Image.fromarray(px.round().astype(np.uint8)).convert("RGBA")
    if "patch32" in sample:
        grid = np.asarray(sample["patch32"]) > 0
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        gh, gw = grid.shape
        for c in range(1, gw):
            x = round(c * size[0] / gw)
            draw.line([(x, 0), (x, size[1])], fill=GRID)
        for r in range(1, gh):
            y = round(r * size[1] / gh)
            draw.line([(0, y), (size[0], y)], fill=GRID)
        out = Image.alpha_composite(out, layer)
        _paint(out, _edges(_labels_at(grid, size)), COLOURS["patch32 positive cells"])
    if "inst" in sample:
        _paint(out, _edges(_labels_at(sample["inst"], size)), COLOURS["instance outlines"])
    if "fov" in sample:
        _paint(out, _edges(_labels_at(sample["fov"] > 0, size)), COLOURS["field of view"])
    return out.convert("RGB")


def _paint(image: Image.Image, where: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Set the pixels of the RGBA ``image`` where ``where`` is True to ``colour``, in place."""
    px = np.asarray(image).copy()
    px[where] = (*colour, 255)
    image.paste(Image.fromarray(px))


# -- teacher stores -----------------------------------------------------------------------------------------------
def _store_panels(url: str, n: int, run: str | None, seed: int, side: int
                  ) -> tuple[str, list[tuple[str, tuple[int, int, int] | None]], list[_Panel], list[str]]:
    readers, notes = [], []
    for name in [run] if run is not None else runs(url):
        try:
            readers.append(FeatureReader.open(url, name))
        except ValueError as e:  # a run whose creation was interrupted (a run that lies about itself: an error)
            if run is not None or isinstance(e, RunSchemaError):
                raise
            notes.append(str(e))
    done = [(r, int(i)) for r in readers for i in np.flatnonzero(r.done())]
    if not done:
        raise ValueError(f"{url} has no finished samples{f' in run {run!r}' if run else ''}; run 'medprep "
                         f"cache-teacher' first")
    picked = [done[int(i)] for i in sorted(np.random.default_rng(seed).choice(len(done), size=min(n, len(done)),
                                                                              replace=False))]
    panels = []
    for reader in readers:
        mine = [i for r, i in picked if r is reader]
        if not mine:
            continue
        images, why = _source_images(reader, mine)
        if why:
            notes.append(f"{reader.run}: embeddings only: {why}")
        keys = reader.keys()
        rgb = _pca_rgb(reader, mine)
        for i, emb in zip(mine, rgb):
            image = images.get(i)
            lines = [keys[i], f"{reader.run} · {reader.dtype} · {' x '.join(map(str, reader.attrs['feature_shape']))}"
                              + ("" if image is not None else " · no source image")]
            if image is None:
                right = Image.fromarray(emb).resize(_fit_size(emb.shape[1::-1], side), Image.Resampling.NEAREST)
                panels.append(_Panel(keys[i], None, reader.run, None, right, lines))
                continue
            left = _fit(Image.fromarray(image), side)
            vh, vw = (int(v) for v in reader.group["valid_hw"][i])
            right = Image.fromarray(np.ascontiguousarray(emb[:vh, :vw])).resize(left.size, Image.Resampling.NEAREST)
            panels.append(_Panel(keys[i], None, reader.run, left, right, lines))
    title = f"{url}: teacher store, {len(panels)} of {len(done)} finished samples, seed {seed}"
    pca = "the embedding's 3 main PCA components as RGB"
    shown = f"left: source image (its valid region); right: {pca}" if any(p.left is not None for p in panels) else pca
    legend = [(shown, None), ("padding", PADDING)]
    return title, legend, panels, notes


def _source_images(reader: FeatureReader, indices: list[int]) -> tuple[dict[int, np.ndarray], str]:
    """The source images (valid region) of samples ``indices`` of a run, read from the source the run records;
    ``({}, why)`` when that source cannot be opened or holds other keys."""
    from medprep.distill.sources import SourceSpec, open_source

    attrs = reader.attrs.get("source")
    if not attrs:
        return {}, "the run records no source"
    try:
        source = open_source(SourceSpec.from_attrs(attrs))
    except (OSError, ValueError, KeyError) as e:
        return {}, f"its source {attrs.get('url')} cannot be opened ({e})"
    if source.keys != reader.keys():
        return {}, f"its source {attrs.get('url')} no longer holds the keys the run was cached from"
    out = {}
    for i in indices:
        image, valid = source.load(i)
        out[i] = image[: valid[0], : valid[1]] if valid else image
    return out, ""


def _pca_rgb(reader: FeatureReader, indices: list[int]) -> list[np.ndarray]:
    """Embeddings of samples ``indices`` as uint8 RGB ``(H, W, 3)``: the valid cells projected on the three main
    principal components of all their cells (each scaled by its 1st-99th percentile); padding in grey."""
    feats = [reader.read(i) for i in indices]  # (C, H, W) float32 each
    masks = [reader.valid_mask(i) for i in indices]
    cells = np.concatenate([f[:, m].T for f, m in zip(feats, masks)]).astype(np.float64)
    fit = cells[np.random.default_rng(0).choice(len(cells), size=min(len(cells), PCA_CELLS), replace=False)]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    comps = vt[:3].T if vt.shape[0] >= 3 else np.pad(vt.T, ((0, 0), (0, 3 - vt.shape[0])))
    proj = (cells - mean) @ comps
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    scaled = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1) * 255
    out, start = [], 0
    for f, m in zip(feats, masks):
        rgb = np.empty((*m.shape, 3), np.uint8)
        rgb[:] = PADDING
        count = int(m.sum())
        rgb[m] = scaled[start:start + count].round().astype(np.uint8)
        start += count
        out.append(rgb)
    return out


# -- the sheet ----------------------------------------------------------------------------------------------------
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    """``text`` shortened in the middle (with ``...``) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 4 and draw.textlength(f"{text[:keep // 2]}...{text[len(text) - keep // 2:]}", font=font) > width:
        keep -= 1
    return f"{text[:keep // 2]}...{text[len(text) - keep // 2:]}"


def _compose(title: str, legend: list[tuple[str, tuple[int, int, int] | None]], panels: list[_Panel], side: int
             ) -> tuple[Image.Image, list[Tile]]:
    """Lay ``panels`` out in rows of ``COLUMNS`` tiles under a title and a colour legend."""
    font = _font()
    line = FONT_SIZE + 5
    cols = min(COLUMNS, len(panels))
    tile_w, label_h = 2 * side + GAP, 2 * line + 6
    tile_h = side + label_h
    header = 2 * line + 2 * GAP
    width = GAP + cols * (tile_w + GAP)
    height = header + math.ceil(len(panels) / cols) * (tile_h + GAP) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, GAP), _fit_text(draw, title, width - 2 * GAP, font), fill=TEXT, font=font)
    x = GAP
    for name, colour in legend:
        if colour is not None:
            draw.rectangle([x, GAP + line + 2, x + FONT_SIZE, GAP + line + 2 + FONT_SIZE], fill=colour)
            x += FONT_SIZE + 5
        draw.text((x, GAP + line), name, fill=TEXT, font=font)
        x += int(draw.textlength(name, font=font)) + 3 * GAP
    tiles = []
    for k, p in enumerate(panels):
        x0 = GAP + (k % cols) * (tile_w + GAP)
        y0 = header + (k // cols) * (tile_h + GAP)
        left = None
        if p.left is not None:
            sheet.paste(p.left, (x0, y0))
            left = (x0, y0, x0 + p.left.width, y0 + p.left.height)
        rx = x0 + side + GAP if p.left is not None else x0
        sheet.paste(p.right, (rx, y0))
        label = (x0, y0 + side + 3, x0 + tile_w, y0 + side + label_h)
        for j, text in enumerate(p.lines):
            draw.text((x0, label[1] + j * line), _fit_text(draw, text, tile_w, font), fill=TEXT, font=font)
        tiles.append(Tile(p.key, p.split, p.run, left, (rx, y0, rx + p.right.width, y0 + p.right.height), label))
    return sheet, tiles


__all__ = ["COLOURS", "TILE", "Sheet", "Tile", "preview"]
