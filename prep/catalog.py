"""What ``medprep datasets`` tells about a dataset, as data: where to get it (official page, licence, citation), its
expected layout and options, its modality ids, how its samples are named in split files, and the command that
builds it."""

from __future__ import annotations

from typing import Any

from medprep.manifests.modalities import MODALITY_MAPS, RELEASED_RULE

from .datasets import converter_class, dataset_name, esp_split_name, registered
from .datasets.options import describe, required
from .export import RELEASED_SPLITS, released_ids, split_file_ids


def build_command(name: str) -> str:
    """The command that builds ``--dataset name``, its required options included (``DOWNLOAD``: the folder the
    official download unpacks to, or the archive)."""
    cls = converter_class(name)
    return " ".join(["medprep build --dataset", name, "--src DOWNLOAD --out shards/", *required(cls.Options)])


def describe_dataset(name: str, examples: bool = True) -> dict[str, Any]:
    """Everything ``medprep datasets NAME`` shows, for ``--json``. ``examples`` adds the split-file ids and the
    esp-medsam-released ids of the dataset's fake download (a fraction of a second per dataset)."""
    name = dataset_name(name)
    cls = converter_class(name)
    split_file = f"{esp_split_name(name)}_data_split.json"
    doc: dict[str, Any] = {
        "name": name, "title": cls.title, "modality": cls.modality,
        "modality_ids": {t: ids[cls.modality] for t, ids in MODALITY_MAPS.items() if cls.modality in ids},
        "domain": cls.domain, "split_rule": cls.split_rule, "homepage": cls.homepage, "license": cls.license,
        "citation": cls.citation, "layout": cls.layout, "options": describe(cls.Options),
        "required_options": required(cls.Options), "build": build_command(name),
        "esp_medsam_split_file": {"name": split_file, "released": split_file in RELEASED_SPLITS},
    }
    if examples:
        doc["split_file_ids"] = [{"source_id": s, "split_file_id": f} for s, f in split_file_ids(name)]
        doc["esp_medsam_released_ids"] = {"rule": RELEASED_RULE,
                                          "examples": {str(k): v for k, v in released_ids(name).items()}}
    return doc


def catalog(examples: bool = False) -> list[dict[str, Any]]:
    """:func:`describe_dataset` of every registered dataset."""
    return [describe_dataset(name, examples) for name in registered()]


__all__ = ["build_command", "catalog", "describe_dataset"]
