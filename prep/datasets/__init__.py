"""One module per dataset; each registers its converter in ``base.REGISTRY``."""

from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, Converter, Failure, Loaded, Record, get_converter, modality_id, register


def load_all() -> None:
    """Import every converter module of this package (registering them)."""
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


__all__ = ["REGISTRY", "Converter", "Failure", "Loaded", "Record", "get_converter", "load_all", "modality_id",
           "register"]
