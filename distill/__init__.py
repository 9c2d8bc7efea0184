"""Frozen-teacher distillation: teacher encoders, preprocessing, the zarr feature store and the cache pipeline.

Command line (``medprep cache-teacher --help``)::

    medprep cache-teacher --encoder vit_h --checkpoint sam_vit_h_4b8939.pth --source shards/drive \
        --out teacher.zarr --views identity,hflip            # a built medical dataset
    medprep cache-teacher --encoder vit_h --checkpoint sam_vit_h_4b8939.pth --source SA-1B/ \
        --fraction 0.01 --seed 0 --dtype int8 --out teacher.zarr   # sa_NNNNNN.tar files, read in place
    medprep check-teacher teacher.zarr --run vit_h-drive --samples 16

Python: ``cache_teacher(load_teacher(...), open_source(SourceSpec(...)), out, run, ...)``; several GPUs:
``cache_distributed(CacheJob(...), ["cuda:0", "cuda:1"])``. Rerunning resumes (finished zarr shards are
skipped); a run's parameters are in its zarr attrs. Students read features by key with
``medprep.loaders.teacher.TeacherFeatures`` / ``TeacherJoin`` and train with :func:`masked_mse`.
"""

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
