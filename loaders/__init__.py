"""Training-side readers: built shards into any PyTorch training code.

``MedShards`` (streaming, exact or resampled epochs, workers x ranks, mixing), ``MedShardsIndexed`` (random access
through the wids index), ``Augment`` (target-consistent geometric augmentation), ``Prompts`` (point and box prompt
fields from the final mask), ``collate`` (``pinned_collate``: into page-locked memory), ``merge_states`` (one
resumable state from every rank's loader state).
"""

from medprep.manifests.pixels import NORMALIZATIONS, SAM_MEAN as PIXEL_MEAN, SAM_STD as PIXEL_STD

from .augment import Affine, Augment
from .fields import DEFAULT_FIELDS, Decoder, collate, pinned_collate
from .indexed import MedShardsIndexed
from .prompts import Prompts
from .reader import open_datasets, read_samples
from .shards import MedShards
from .state import merge_states

__all__ = [
    "Affine", "Augment", "DEFAULT_FIELDS", "Decoder", "MedShards", "MedShardsIndexed", "NORMALIZATIONS",
    "PIXEL_MEAN", "PIXEL_STD", "Prompts", "collate", "merge_states", "open_datasets", "pinned_collate",
    "read_samples",
]
