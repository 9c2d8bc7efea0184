"""Student side of the teacher cache: features by sample key, and shard samples joined with their features."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch

from medprep.manifests.features import FeatureReader, in_fraction


class TeacherFeatures:
    """Random access to a teacher feature store by sample key (int8/bfloat16 decoded to float32).

    ``run=None`` opens the store's only run. Picklable (reopens the store), so it works in DataLoader workers.
    """

    def __init__(self, store: str, run: str | None = None):
        self._open(store, run)

    def _open(self, url: str, run: str | None) -> None:
        self.store = FeatureReader.open(url, run)
        self._index = {k: i for i, k in enumerate(self.store.keys())}
        self._done = self.store.done()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.store.url, "run": self.store.run}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._open(state["url"], state["run"])

    def __repr__(self) -> str:
        return (f"TeacherFeatures({self.store.url!r}, run={self.store.run!r}, samples={len(self)}, "
                f"done={int(self._done.sum())}, dtype={self.store.dtype!r}, views={self.views}, "
                f"feature_shape={tuple(self.store.attrs['feature_shape'])})")

    @property
    def views(self) -> list[str]:
        return self.store.views

    def keys(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def index(self, key: str) -> int:
        """Row of ``key``; raises a ``KeyError`` that says what to do when it is missing or not cached yet."""
        i = self._index.get(key)
        if i is None:
            example = next(iter(self._index), None)
            raise KeyError(
                f"sample {key!r} is not in teacher store {self.store.url}/{self.store.run} ({len(self)} keys, "
                f"e.g. {example!r}): the store was cached from another dataset or split; run "
                f"'medprep cache-teacher' on this one"
            )
        if not self._done[i]:
            self._done = self.store.done()  # another worker may have finished it since
            if not self._done[i]:
                raise KeyError(f"sample {key!r} of {self.store.url}/{self.store.run} is not cached yet; "
                               f"rerun 'medprep cache-teacher' to finish the run")
        return i

    def get(self, key: str, view: str = "identity") -> np.ndarray:
        """Float32 features ``(C, H, W)`` of ``key`` in ``view`` (identity or hflip)."""
        return self.store.read(self.index(key), view)

    __getitem__ = get

    def valid_mask(self, key: str, view: str = "identity") -> np.ndarray:
        """Boolean ``(H, W)`` mask of the cells that see image content (False over padding)."""
        return self.store.valid_mask(self.index(key), view)


class TeacherJoin(torch.utils.data.IterableDataset):
    """Samples (dicts with ``key`` or ``__key__``, e.g. from ``MedShards``) joined with their teacher features.

    Adds ``teacher`` (float32 ``(C, H, W)``), ``teacher_valid`` (bool ``(H, W)``, False over padding) and
    ``teacher_view``. A key missing from the store raises ``KeyError``: nothing is skipped silently.
    ``hflip`` (needs a store cached with ``--views identity,hflip``): probability of flipping a sample; every
    tensor of two or more dimensions (image, mask, patch grids, ``(C, H, W)`` layout) is flipped along its last
    axis and the target is the teacher's feature of the flipped image. The draw depends on ``(seed, epoch, key)``
    only. Do not combine with geometric augmentation upstream: the stored targets would no longer match.
    """

    def __init__(self, samples: Iterable[dict[str, Any]], features: TeacherFeatures, hflip: float = 0.0,
                 seed: int = 0):
        if hflip and "hflip" not in features.views:
            raise ValueError(f"hflip={hflip} needs the hflip view, but the store holds only {features.views}: "
                             f"cache it with --views identity,hflip")
        self.samples, self.features, self.hflip, self.seed, self.epoch = samples, features, hflip, seed, 0

    def __repr__(self) -> str:
        return f"TeacherJoin({self.samples!r}, {self.features!r}, hflip={self.hflip}, seed={self.seed})"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.samples, "set_epoch"):
            self.samples.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.samples:
            key = sample["__key__"] if "__key__" in sample else sample["key"]
            view = "hflip" if self.hflip and in_fraction(f"{self.epoch}:{key}", self.hflip, self.seed) else "identity"
            if view == "hflip":
                sample = {k: v.flip(-1) if isinstance(v, torch.Tensor) and v.ndim >= 2 else v
                          for k, v in sample.items()}
            yield {
                **sample,
                "teacher": torch.from_numpy(self.features.get(key, view)),
                "teacher_valid": torch.from_numpy(self.features.valid_mask(key, view)),
                "teacher_view": view,
            }


def teacher_shards(dataset: str, store: str, run: str | None = None, split: str = "train", hflip: float = 0.0,
                   seed: int = 0, **medshards: Any) -> TeacherJoin:
    """``MedShards(dataset, split, **medshards)`` joined with the features of ``store``/``run``."""
    from .shards import MedShards

    return TeacherJoin(MedShards(dataset, split, seed=seed, **medshards), TeacherFeatures(store, run), hflip, seed)
