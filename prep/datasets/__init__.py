"""One module per dataset; each registers its converter in ``base.REGISTRY``."""

from __future__ import annotations

from .base import (
    DOMAINS, REGISTRY, Converter, Failure, Loaded, Record, converter_class, dataset_name, esp_split_name,
    get_converter, load_all, looks_like, make_fake, modality_id, register, registered,
)
from .options import NoOptions, option
from .options import describe as describe_options

__all__ = ["DOMAINS", "REGISTRY", "Converter", "Failure", "Loaded", "Record", "NoOptions", "converter_class",
           "dataset_name", "describe_options", "esp_split_name", "get_converter", "load_all", "looks_like", "make_fake",
           "modality_id", "option", "register", "registered"]
