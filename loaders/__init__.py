"""Training-side readers: built shards into any PyTorch training code.

``MedShards`` (streaming, exact or resampled epochs, workers x ranks, mixing), ``MedShardsIndexed`` (random access
through the wids index), ``Augment`` (target-consistent geometric augmentation), ``collate``.
"""

from .augment import Affine, Augment
from .fields import DEFAULT_FIELDS, NORMALIZATIONS, PIXEL_MEAN, PIXEL_STD, Decoder, collate
from .indexed import MedShardsIndexed
from .reader import open_sources, read_samples
from .shards import MedShards

__all__ = [
    "Affine", "Augment", "DEFAULT_FIELDS", "Decoder", "MedShards", "MedShardsIndexed", "NORMALIZATIONS",
    "PIXEL_MEAN", "PIXEL_STD", "collate", "open_sources", "read_samples",
]
