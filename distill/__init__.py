"""Frozen-teacher distillation: teacher encoders, preprocessing, the zarr feature store and the cache pipeline."""

from .preprocess import NORMALIZATIONS, Preprocess
from .sources import FolderSource, MedicalSource, SA1BSource, SourceSpec, open_source
from .store import FeatureStore
from .teachers import Teacher, load_teacher, random_sam
from .pipeline import CacheResult, cache_teacher, open_run
from .distributed import CacheJob, cache_distributed
from .loss import masked_mse

__all__ = [
    "NORMALIZATIONS", "Preprocess", "FolderSource", "MedicalSource", "SA1BSource", "SourceSpec", "open_source",
    "FeatureStore", "Teacher", "load_teacher", "random_sam", "CacheResult", "cache_teacher", "open_run",
    "CacheJob", "cache_distributed", "masked_mse",
]
