"""Frozen-teacher distillation: teacher encoders, preprocessing, the zarr feature store and the cache pipeline.

Command line (``medprep cache-teacher --help``)::

    medprep cache-teacher --encoder vit_h --checkpoint sam_vit_h_4b8939.pth --source shards/drive \
        --out teacher.zarr --views identity,hflip            # a built medical dataset
    medprep cache-teacher --encoder vit_h --checkpoint sam_vit_h_4b8939.pth --source SA-1B/ \
        --fraction 0.01 --seed 0 --dtype int8 --out teacher.zarr   # sa_NNNNNN.tar files, read in place
    medprep cache-teacher --encoder vit_h --checkpoint sam_vit_h_4b8939.pth --source shards/drive,shards/isic2018 \
        --source SA-1B/ --fraction 0.01 --out teacher.zarr   # one corpus: a run per source (vit_h-drive, ...)
    medprep check-teacher teacher.zarr --run vit_h-drive --samples 16

Python: ``cache_teacher(CacheParams(encoder, source, out, ...), execution=CacheExecution(device="cpu", ...))``,
the same options as the command line, what the run writes apart from how it runs (several GPUs:
``CacheExecution(devices=("cuda:0", "cuda:1"))``); several sources:
``cache_corpus(per_source(encoder, sources, out, ...), execution=...)``; progress arrives as events through
``on_event``. Rerunning resumes (finished zarr shards are skipped); a run's parameters are in its zarr attrs.
Students read features by key over all the runs of a store with ``medprep.loaders.teacher.TeacherFeatures`` /
``TeacherJoin`` / ``SA1BStream`` (over the read-only reader of ``medprep.manifests.features``) and train with
:func:`masked_mse`.
"""

from .preprocess import NORMALIZATIONS, Preprocess
from .sources import FolderSource, MedicalSource, SA1BSource, SourceSpec, open_source, source_specs
from .store import FeatureStore
from .teachers import Teacher, load_teacher, random_sam
from .params import CacheExecution, CacheParams, per_source
from .events import CacheEvent, Encoded, RunOpened, Skipped
from .pipeline import CacheError, open_run, write_shards
from .cache import CacheResult, cache_corpus, cache_teacher
from .loss import masked_mse

__all__ = [
    "NORMALIZATIONS", "Preprocess", "FolderSource", "MedicalSource", "SA1BSource", "SourceSpec", "open_source",
    "source_specs", "FeatureStore", "Teacher", "load_teacher", "random_sam", "CacheExecution", "CacheParams",
    "per_source",
    "CacheEvent", "Encoded", "RunOpened", "Skipped", "open_run", "write_shards", "CacheError", "CacheResult", "cache_corpus", "cache_teacher",
    "masked_mse",
]
