"""Sample fields: which tar entries each requested field needs, and how raw entries become tensors.

Only the entries of the requested fields are read from the tar and decoded. Field names:

=============== ==================== ===============================================================
field           entry                tensor
=============== ==================== ===============================================================
``image``       ``image.png``        float32 ``(3, H, W)``, normalised as chosen (``NORMALIZATIONS``, ``minmax``)
``mask``        ``mask.png``         float32 ``(1, H, W)`` in {0, 1}
``patchN``      ``patchN.npy``       float32 ``(1, H/N, W/N)`` in {0, 1} (max-pool of the mask)
``fov``         ``fov.png``          float32 ``(1, H, W)`` in {0, 1} (DRIVE field of view)
``inst``        ``inst.png``         int32 ``(1, H, W)`` instance ids, 0 = background (DSB-2018)
``modality_id`` ``modality.cls``     int64 scalar
``meta``        ``meta.json``        dict
``key``         (the tar key)        str
``points``      ``mask.png``         float32 ``(count, 2)`` ``(x, y)`` per region, + bool ``points_valid``
``boxes``       ``mask.png``         float32 ``(count + 1, 4)`` whole mask then per region, + ``boxes_valid``
=============== ==================== ===============================================================

``points`` and ``boxes`` are computed from the final (augmented) mask, per instance of ``inst.png`` where the
sample has one (``medprep.loaders.prompts``; ``prompts=Prompts(count, box_jitter, box_rule)`` sets the slots, the box
perturbation, drawn from the augmentation's generator, and the rule of the whole-object box: with ``truncate`` it
is LiteMedSAM's box of ``meta.json``'s ``original_box``, followed through flips and quarter turns, the final
mask's after an affine warp).
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any, Collection, Iterable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from medprep.manifests.errors import NotFound
from medprep.manifests.modalities import N_MODALITIES, recorded_table
from medprep.manifests.pixels import (NORMALIZATIONS, PER_IMAGE_NORMALIZATIONS, PROMPT_FIELDS, patch_size,
                                      recorded_box)

from .augment import BOX_CORNERS
from .prompts import Prompts

if TYPE_CHECKING:
    from medprep.manifests import BuiltDataset

    from .augment import Augment

cv2.setNumThreads(1)

DEFAULT_FIELDS = ("image", "mask", "patch32", "modality_id", "key")  # what MedShards and MedShardsIndexed give
_ENTRIES = {"image": "image.png", "mask": "mask.png", "fov": "fov.png", "inst": "inst.png",
            "modality_id": "modality.cls", "meta": "meta.json", "key": None}


def check_fields(fields: Iterable[str]) -> tuple[str, ...]:
    """Validate field names; returns them as a tuple without duplicates (order kept)."""
    out = tuple(dict.fromkeys(fields))
    bad = [f for f in out if f not in _ENTRIES and f not in PROMPT_FIELDS and patch_size(f) is None]
    if bad or not out:
        raise ValueError(f"unknown fields {bad or '(none given)'}: expected some of {', '.join(_ENTRIES)}, "
                         f"{', '.join(PROMPT_FIELDS)}, patchN (e.g. patch16, patch32, patch64)")
    return out


def decode_png(data: bytes, where: str = "PNG entry") -> np.ndarray:
    """PNG bytes -> array (H, W) or (H, W, 3) RGB, keeping the bit depth."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"{where} is not a decodable PNG ({len(data)} bytes): the shard is damaged; run "
                         f"'medprep verify' on its dataset and rebuild")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr


def _where(raw: dict[str, Any], entry: str) -> str:
    """How errors name an entry of a raw sample: ``<key>.<entry> in <shard url>``."""
    return f"{raw.get('__key__')}.{entry} in {raw.get('__url__')}"


def _damaged(where: str, found: str, expected: str) -> ValueError:
    return ValueError(f"{where}: {found}, expected {expected}: the shard is damaged or was not written by this "
                      f"medprep; run 'medprep verify' on its dataset and rebuild")


def decode_patch(data: bytes, where: str, n: int) -> np.ndarray:
    """``patchN.npy`` bytes -> uint8 0/1 grid ``(H/N, W/N)``."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _damaged(where, f"not a .npy array ({len(data)} bytes: {e})", f"a uint8 0/1 grid of patch {n}") from None
    if arr.ndim != 2 or arr.dtype != np.uint8 or (arr.size and arr.max() > 1):
        top = int(arr.max()) if arr.size and arr.dtype.kind in "biu" else "?"
        raise _damaged(where, f"an array of shape {arr.shape}, dtype {arr.dtype}, max {top}",
                       f"a 2-d uint8 0/1 grid of patch {n}")
    return arr


def decode_modality(data: bytes, where: str, ids: Collection[int] = range(N_MODALITIES)) -> int:
    """``modality.cls`` bytes -> the modality id, which must be one of ``ids`` (the build's table; by default the
    built-in tables' ids)."""
    try:
        value = int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        value = None
    if value is None or value not in ids:
        allowed = (f"0-{N_MODALITIES - 1}" if ids == range(N_MODALITIES) else ", ".join(map(str, sorted(ids))))
        raise _damaged(where, f"holds {data[:20]!r}", f"a modality id of the build's table ({allowed})")
    return value


def decode_meta(data: bytes, where: str) -> dict[str, Any]:
    """``meta.json`` bytes -> dict."""
    try:
        meta = json.loads(data)
    except ValueError as e:
        raise _damaged(where, f"not JSON ({e})", "a JSON object") from None
    if not isinstance(meta, dict):
        raise _damaged(where, f"a JSON {type(meta).__name__}", "a JSON object")
    return meta


def check_sizes(arrays: dict[str, np.ndarray], raw: dict[str, Any], size: int | None) -> None:
    """The decoded spatial fields of one sample agree: image ``(H, W, 3)``; mask, fov, inst ``(H, W)``; each
    ``patchN`` ``(H/N, W/N)``; and ``H = W = size`` when the manifest records the side ``size``."""
    full = {f: a for f, a in arrays.items() if not patch_size(f) and not f.startswith("_")}
    if "image" in full and (full["image"].ndim != 3 or full["image"].shape[2] != 3):
        raise _damaged(_where(raw, "image.png"), f"an image of shape {full['image'].shape}", "an RGB image (H, W, 3)")
    ref = next(iter(full), None)
    hw = full[ref].shape[:2] if ref else (size, size) if size else None
    if hw is None:
        return
    source = f"the sample's {_ENTRIES[ref]}" if ref else "its manifest's size"
    for f, a in arrays.items():
        n = patch_size(f)
        if f.startswith("_") or f == ref:
            continue
        want = (hw[0] // n, hw[1] // n) if n else hw
        if a.shape[:2] != want or (f != "image" and a.ndim != 2):
            raise _damaged(_where(raw, f"{f}.npy" if n else _ENTRIES[f]), f"shape {a.shape}",
                           f"{want} (from {source}, {hw[0]} x {hw[1]})")
    if ref and size and hw != (size, size):
        raise _damaged(_where(raw, _ENTRIES[ref]), f"{hw[0]} x {hw[1]} pixels",
                       f"{size} x {size} (the size its manifest records)")


def _lut(how: str) -> np.ndarray:
    """(3, 256) float32 table: the normalised value of every uint8 level, per channel."""
    mean, std = NORMALIZATIONS[how]
    levels = np.arange(256, dtype=np.float64)
    return np.stack([(levels - m) / s for m, s in zip(mean, std)]).astype(np.float32)


_LUTS = {how: _lut(how) for how in NORMALIZATIONS}


def normalize_image(image: np.ndarray, how: str) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` RGB -> float32 ``(3, H, W)`` tensor, ``(x - mean) / std`` with the constants of ``how``
    (one table look-up per pixel and channel, straight into channel-first order)."""
    lut = _LUTS[how]
    out = np.empty((3,) + image.shape[:2], np.float32)
    for c in range(3):
        np.take(lut[c], image[:, :, c], out=out[c])
    return torch.from_numpy(out)


def minmax(image: np.ndarray, valid: np.ndarray, lo: float, hi: float) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` RGB -> float32 ``(3, H, W)``, ``(x - lo) / (hi - lo)`` with the image's valid-region
    minimum and maximum (``hi - lo`` at least 1e-8, as LiteMedSAM), 0 outside ``valid`` (the padding)."""
    out = (np.moveaxis(image, 2, 0).astype(np.float32) - np.float32(lo)) / np.float32(max(hi - lo, 1e-8))
    out[:, ~valid] = 0
    return torch.from_numpy(out)


def _valid_region(image: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, float, float]:
    """The unpadded region of a sample (``valid_hw`` of its meta) as a bool mask, and its minimum and maximum."""
    h, w = meta["valid_hw"]
    valid = np.zeros(image.shape[:2], bool)
    valid[:h, :w] = True
    return valid, float(image[:h, :w].min()), float(image[:h, :w].max())


def _corners(box: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    """A bool map of ``hw`` with the corners ``(x_min, y_min)`` and ``(x_max, y_max)`` of ``box`` set."""
    out = np.zeros(hw[:2], bool)
    out[box[1], box[0]] = out[box[3], box[2]] = True
    return out


def _corners_box(corners: np.ndarray) -> np.ndarray:
    """The box of a (flipped, turned) ``_corners`` map: the box moved as its corners were."""
    ys, xs = np.nonzero(corners)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.int64)


def _binary(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)[None])


class Decoder:
    """Turns a raw webdataset sample (entry name -> bytes) into a dict of tensors with the requested fields.

    Every entry is checked against what it claims to be (``modality.cls`` an id of the modality tables, image,
    masks and patch grids of agreeing sizes, and ``size`` x ``size`` when ``size`` is given); errors name the shard,
    the key and the entry. ``augment`` (optional) is applied to the decoded arrays before they become tensors; it gets the mask decoded
    as well when it has to recompute patch targets. Prompt fields (``points``, ``boxes``) are computed after it
    from the mask (and ``inst.png`` when the sample has one), as ``prompts`` says.
    """

    def __init__(self, fields: Iterable[str] = DEFAULT_FIELDS, normalize: str = "sam",
                 augment: Augment | None = None, prompts: Prompts = Prompts(), size: int | None = None,
                 modality_ids: Collection[int] = range(N_MODALITIES)):
        if normalize not in NORMALIZATIONS and normalize not in PER_IMAGE_NORMALIZATIONS:
            raise ValueError(f"normalize={normalize!r}: expected one of "
                             f"{', '.join((*NORMALIZATIONS, *PER_IMAGE_NORMALIZATIONS))}")
        self.fields = check_fields(fields)
        self.normalize = normalize
        # minmax: statistics of the unpadded region (meta's valid_hw), which is tracked through the augmentation
        self.per_image = normalize in PER_IMAGE_NORMALIZATIONS and "image" in self.fields
        self.augment = augment
        self.size = size  # the side every sample has (its manifest's size), checked when given
        self.modality_ids = modality_ids  # the ids ``modality.cls`` may hold
        self.patches = [f for f in self.fields if patch_size(f)]
        spatial = [f for f in self.fields if f in ("image", "mask", "fov", "inst") or f in self.patches]
        self.arrays = list(spatial)
        self.prompts = prompts
        self.prompt_fields = [f for f in self.fields if f in PROMPT_FIELDS]
        # row 0 of boxes from the original mask's box recorded in meta.json
        self.recorded_box = "boxes" in self.prompt_fields and prompts.box_rule == "truncate"
        needs_mask = self.prompt_fields or (augment is not None and augment.recomputes_patches and self.patches)
        if needs_mask and "mask" not in spatial:
            self.arrays.append("mask")  # needed for the prompts or to recompute the patch targets, not returned
        # prompts are per instance where a sample has an instance map: read when present, not required
        self.optional = ["inst"] if self.prompt_fields and "inst" not in spatial else []

    @property
    def entries(self) -> set[str]:
        """Tar entries to read (always ``modality.cls``, so that every sample has at least one)."""
        names = {"modality.cls"}
        for f in set(self.fields) - set(PROMPT_FIELDS) | set(self.arrays) | set(self.optional):
            names.add(f"{f}.npy" if patch_size(f) else _ENTRIES[f])
        if self.per_image or self.recorded_box:
            names.add("meta.json")
        names.discard(None)  # type: ignore[arg-type]
        return names

    def _entry(self, raw: dict[str, Any], name: str) -> bytes:
        try:
            return raw[name]
        except KeyError:
            have = sorted(k for k in raw if not k.startswith("__"))
            raise NotFound(
                f"sample {raw.get('__key__')!r} in {raw.get('__url__')} has no {name} (it has {', '.join(have)}): "
                f"request only fields that every source has"
            ) from None

    def decode_arrays(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        """The spatial fields as numpy arrays: image uint8 (H, W, 3), masks bool, inst uint16, patches uint8."""
        out: dict[str, np.ndarray] = {}
        for f in self.arrays:
            if patch_size(f):
                out[f] = decode_patch(self._entry(raw, f"{f}.npy"), _where(raw, f"{f}.npy"), patch_size(f))
            else:
                entry = _ENTRIES[f]
                arr = decode_png(self._entry(raw, entry), _where(raw, entry))
                out[f] = arr if f in ("image", "inst") else arr > 0
        for f in self.optional:
            if _ENTRIES[f] in raw:
                out[f] = decode_png(raw[_ENTRIES[f]], _where(raw, _ENTRIES[f]))
        check_sizes(out, raw, self.size)
        return out

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        arrays = self.decode_arrays(raw)
        if rng is None and (self.augment is not None or self.prompt_fields):  # only draws need one
            rng = np.random.default_rng()
        if self.per_image or self.recorded_box:
            meta = decode_meta(self._entry(raw, "meta.json"), _where(raw, "meta.json"))
        if self.per_image:
            arrays["_valid"], lo, hi = _valid_region(arrays["image"], meta)
        try:
            whole = recorded_box(meta, arrays["mask"].shape[1]) if self.recorded_box else None
        except ValueError as e:
            raise _damaged(_where(raw, "meta.json"), f"holds {e}", "the box its build wrote") from None
        if self.augment is not None:
            if whole is not None:
                arrays[BOX_CORNERS] = _corners(whole, arrays["mask"].shape)
            arrays = self.augment(arrays, rng)
            whole = _corners_box(arrays.pop(BOX_CORNERS)) if BOX_CORNERS in arrays else None
        out: dict[str, Any] = {}
        if self.prompt_fields:
            prompts = self.prompts.compute(self.prompt_fields, arrays["mask"], arrays.get("inst"), rng, whole)
            out.update({k: torch.from_numpy(v) for k, v in prompts.items()})
        for f in self.fields:
            if f == "image":
                out[f] = (minmax(arrays[f], arrays["_valid"], lo, hi) if self.per_image
                          else normalize_image(arrays[f], self.normalize))
            elif f == "inst":
                out[f] = torch.from_numpy(np.ascontiguousarray(arrays[f], dtype=np.int32)[None])
            elif f in arrays:
                out[f] = _binary(arrays[f])
            elif f == "modality_id":
                out[f] = torch.tensor(decode_modality(self._entry(raw, "modality.cls"), _where(raw, "modality.cls"),
                                                      self.modality_ids),
                                      dtype=torch.int64)
            elif f == "meta":
                out[f] = decode_meta(self._entry(raw, "meta.json"), _where(raw, "meta.json"))
            elif f == "key":
                out[f] = raw["__key__"]
        return out


def recorded_decoder(datasets: Sequence[BuiltDataset], fields: Iterable[str] | None, normalize: str | None,
                     augment: Augment | None, prompts: Prompts | None) -> Decoder:
    """A ``Decoder`` whose arguments left ``None`` come from what the sources' builds recorded for their readers
    (``medprep build --preset``): ``normalize`` (else ``sam``), the ``prompts`` field added to ``DEFAULT_FIELDS``,
    ``box_jitter`` and ``box_rule``. Sources that recorded different values of one are an error: pass it explicitly.
    Samples are checked against the side the manifests record when they all record the same one."""
    recorded: dict[str, Any] = {}
    given = {"normalize": normalize, "prompts": fields, "box_jitter": prompts, "box_rule": prompts}
    for name in ("normalize", "prompts", "box_jitter", "box_rule"):
        if given[name] is not None:  # the caller's value: what the builds recorded does not matter
            continue
        values = {ds.manifest.params.get(name) for ds in datasets}
        if len(values) > 1:
            how = f"prompts=Prompts({name}=...)" if name in ("box_jitter", "box_rule") else f"{name}="
            raise ValueError(f"the sources' builds recorded different {name} values ({', '.join(map(str, values))}): "
                             f"pass {how} explicitly")
        if values != {None}:
            recorded[name] = values.pop()
    if fields is None:
        fields = (*DEFAULT_FIELDS, *([recorded["prompts"]] if "prompts" in recorded else []))
    if prompts is None:
        prompts = Prompts(**{k: recorded[k] for k in ("box_jitter", "box_rule") if k in recorded})
    sizes = {ds.manifest.params.get("size") for ds in datasets}
    size = sizes.pop() if len(sizes) == 1 else None
    tables = [recorded_table(ds.manifest.params) for ds in datasets]
    ids = (range(N_MODALITIES) if not tables or None in tables
           else frozenset(i for t in tables if t is not None for i in t.values()))
    return Decoder(fields, normalize or recorded.get("normalize", "sam"), augment, prompts,
                   size if isinstance(size, int) and size > 0 else None, ids)


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: tensors are stacked (into shared memory inside DataLoader workers, by torch's
    ``default_collate``), everything else (keys, meta dicts) is kept as a list."""
    first = batch[0]
    return {k: default_collate([s[k] for s in batch]) if isinstance(first[k], torch.Tensor)
            else [s[k] for s in batch] for k in first}


def pinned_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`collate`, with each tensor stacked straight into page-locked (pinned) memory when called in the main
    process with CUDA available (``DataLoader(num_workers=0)``, or a loop batching reads itself), so that
    ``.to("cuda", non_blocking=True)`` needs no staging copy. Inside DataLoader workers (which must not touch CUDA)
    and without CUDA it is :func:`collate`: pass ``pin_memory=True`` to the DataLoader to pin worker batches."""
    if get_worker_info() is not None or not torch.cuda.is_available():
        return collate(batch)
    out: dict[str, Any] = {}
    for k, first in batch[0].items():
        if isinstance(first, torch.Tensor):
            pinned = torch.empty((len(batch), *first.shape), dtype=first.dtype, pin_memory=True)
            out[k] = torch.stack([s[k] for s in batch], out=pinned)
        else:
            out[k] = [s[k] for s in batch]
    return out
