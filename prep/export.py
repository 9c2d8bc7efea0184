"""Export built datasets into the folder layouts other training code reads (``medprep export``).

* ``esp-medsam``: ``image_1024/<id>.png``, ``mask_1024/<id>.png`` and ``<name>_data_split.json``
  (``{"train": ["<id>.png", ...], "valid": [...], "test": [...]}``), as the authors' ``BinaryLoader`` reads them:
  ids are the authors' file stems (``Converter.split_file_id``), cut by them at the first dot, so dots and slashes
  in an id become ``_``. Image and mask are the shard's PNG bytes, unchanged (RGB uint8; mask 0/255).
* ``nnunet``: nnU-Net v2 raw layout ``Dataset<ID>_<Name>/imagesTr/<key>_0000.png`` (RGB natural image),
  ``labelsTr/<key>.png`` (labels 0/1), test split in ``imagesTs``/``labelsTs``, ``dataset.json`` and a
  ``splits_final.json`` holding medprep's train/valid split as fold 0 (copy it next to the preprocessed data).
* ``folder``: ``<split>/images/<key>.png`` and ``<split>/masks/<key>.png`` (shard bytes, mask 0/255).

Files are written atomically in manifest order; the same shards give the same bytes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from medprep.loaders import open_sources, read_samples
from medprep.loaders.reader import Source
from medprep.manifests import BuiltDataset, atomic_write, join

from .datasets import REGISTRY, get_converter, load_all
from .imaging import decode, encode_png

LAYOUTS = ("esp-medsam", "nnunet", "folder")
# <name>_data_split.json of the authors' repository, per medprep dataset
ESP_NAMES = {
    "isic2018": "isic", "ph2": "ph2", "montgomery": "lung", "shenzhen": "lung", "nih-lung": "nih",
    "drive": "retinal", "stare": "stare", "cvc-clinicdb": "cvccdb", "cvc-colondb": "colon", "udiat": "ultrasound",
    "busi": "busi", "dsb2018": "dsb", "tnbc": "tnbc",
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
    for url in ds.shard_urls(split):
        for raw in read_samples(url, ENTRIES):
            missing = ENTRIES - set(raw)
            if missing:
                raise ValueError(f"sample {raw['__key__']} in {url} lacks {', '.join(sorted(missing))}: "
                                 f"not a medprep shard? run 'medprep verify {ds.root}'")
            yield raw, json.loads(raw["meta.json"])


def _esp_ids(ds: BuiltDataset):
    """source id -> the authors' file stem for ``ds`` (identity for datasets without a renaming)."""
    load_all()
    if ds.name not in REGISTRY:
        return lambda sid: re.sub(r"[./\\]", "_", sid)
    conv = get_converter(ds.name, **ds.manifest.params.get("options", {}))
    return lambda sid: re.sub(r"[./\\]", "_", conv.split_file_id(sid))


def _splits(datasets: list[BuiltDataset], splits: Sequence[str] | None) -> list[str]:
    present = [s for ds in datasets for s in ds.manifest.splits()]
    chosen = list(dict.fromkeys(splits or present))
    missing = [s for s in chosen if s not in present]
    if missing:
        raise ValueError(f"splits {missing} are in none of the sources (they have {sorted(set(present))})")
    return chosen


def _mask01(png: bytes, where: str) -> bytes:
    return encode_png((decode(png, where) > 0).astype(np.uint8))


def export(sources: Source | Sequence[Source], out: str | os.PathLike, layout: str, *,
           splits: Sequence[str] | None = None, name: str | None = None, dataset_id: int = 501) -> ExportResult:
    """Write the samples of ``splits`` (default: all) of one or more built datasets to ``out`` in ``layout``.

    ``name``: the esp-medsam split file's name (default from ``ESP_NAMES``) or the nnU-Net dataset name (default:
    the dataset names); ``dataset_id``: the nnU-Net dataset number.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    datasets = open_sources(sources)
    chosen = _splits(datasets, splits)
    out = str(out).rstrip("/")
    if layout == "esp-medsam":
        return _esp_medsam(datasets, out, chosen, name)
    if layout == "nnunet":
        return _nnunet(datasets, out, chosen, name, dataset_id)
    result = ExportResult(out, layout, index=join(out, "<split>/{images,masks}"))
    for split in chosen:
        for ds in datasets:
            for raw, _ in _samples(ds, split):
                atomic_write(join(out, split, "images", f"{raw['__key__']}.png"), raw["image.png"])
                atomic_write(join(out, split, "masks", f"{raw['__key__']}.png"), raw["mask.png"])
                result.counts[split] = result.counts.get(split, 0) + 1
    return result


def _esp_medsam(datasets: list[BuiltDataset], out: str, splits: list[str], name: str | None) -> ExportResult:
    names = {name} if name else {ESP_NAMES.get(ds.name, ds.name) for ds in datasets}
    if len(names) != 1:
        raise ValueError(f"sources {[ds.name for ds in datasets]} have different ESP-MedSAM split-file names "
                         f"{sorted(names)}; pass --name to write them into one split file")
    index = join(out, f"{names.pop()}_data_split.json")
    result = ExportResult(out, "esp-medsam", index=index)
    listing: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    sizes = set()
    for ds in datasets:
        esp_id = _esp_ids(ds)
        for split in splits:
            for raw, meta in _samples(ds, split):
                ident = esp_id(meta["source_id"])
                if ident in owner:
                    raise ValueError(f"{raw['__key__']} and {owner[ident]} both export as {ident}.png; export them "
                                     f"to different folders")
                owner[ident] = raw["__key__"]
                sizes.add(meta["size"])
                atomic_write(join(out, "image_1024", f"{ident}.png"), raw["image.png"])
                atomic_write(join(out, "mask_1024", f"{ident}.png"), raw["mask.png"])
                listing.setdefault(split, []).append(f"{ident}.png")
    atomic_write(index, json.dumps(listing).encode())
    result.counts = {k: len(v) for k, v in listing.items()}
    if sizes != {1024}:
        result.notes.append(f"images are {sorted(sizes)} px; the ESP-MedSAM code expects 1024 (rebuild with "
                            f"--size 1024 to train it)")
    return result


def _nnunet(datasets: list[BuiltDataset], out: str, splits: list[str], name: str | None,
            dataset_id: int) -> ExportResult:
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"--dataset-id {dataset_id}: nnU-Net dataset ids are 1..999 (use 500+ for your own)")
    label = re.sub(r"[^A-Za-z0-9]+", "", name or "_".join(ds.name for ds in datasets)) or "medprep"
    folder = join(out, f"Dataset{dataset_id:03d}_{label}")
    result = ExportResult(folder, "nnunet", index=join(folder, "dataset.json"))
    fold: dict[str, list[str]] = {"train": [], "val": []}
    for split in splits:
        images, labels = ("imagesTs", "labelsTs") if split == "test" else ("imagesTr", "labelsTr")
        for ds in datasets:
            for raw, _ in _samples(ds, split):
                key = raw["__key__"]
                atomic_write(join(folder, images, f"{key}_0000.png"), raw["image.png"])
                atomic_write(join(folder, labels, f"{key}.png"), _mask01(raw["mask.png"], f"{key}.mask.png"))
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
