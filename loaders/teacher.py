"""Student side of the teacher cache: features by sample key, and shard samples joined with their features."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch

from medprep.distill.store import FeatureStore
from medprep.manifests import open_dataset


class TeacherFeatures:
    """Random access to a teacher feature store by sample key (int8/bfloat16 decoded to float32).

    ``run=None`` opens the store's only run. Picklable (reopens the store), so it works in DataLoader workers.
    """

    def __init__(self, store: str, run: str | None = None):
        self._open(store, run)

    def _open(self, url: str, run: str | None) -> None:
        self.store = FeatureStore.open(url, run)
        self._index = {k: i for i, k in enumerate(self.store.keys())}
        self._done = self.store.group["done"][:]

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.store.url, "run": self.store.run}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._open(state["url"], state["run"])

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
            self._done = self.store.group["done"][:]  # another worker may have finished it since
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
    """Samples (dicts with ``__key__``, e.g. from webdataset or MedShards) joined with their teacher features.

    Adds ``teacher`` (float32 tensor ``(C, H, W)``), ``teacher_valid`` (bool tensor ``(H, W)``) and
    ``teacher_view``. A sample whose key is not in the store raises ``KeyError``: nothing is skipped silently.
    With ``view="hflip"`` the targets are those of the horizontally flipped image: flip the input to match.
    """

    def __init__(self, samples: Iterable[dict[str, Any]], features: TeacherFeatures, view: str = "identity"):
        if view not in features.views:
            raise ValueError(f"view {view!r} was not cached (views in the store: {features.views})")
        self.samples, self.features, self.view = samples, features, view

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.samples:
            key = sample["__key__"]
            yield {
                **sample,
                "teacher": torch.from_numpy(self.features.get(key, self.view)),
                "teacher_valid": torch.from_numpy(self.features.valid_mask(key, self.view)),
                "teacher_view": self.view,
            }


def teacher_shards(dataset: str, store: str, run: str | None = None, split: str | None = None,
                   view: str = "identity") -> TeacherJoin:
    """The raw webdataset samples of a built dataset (entries as bytes, manifest order) joined with features."""
    import webdataset as wds

    urls = open_dataset(dataset).shard_urls(split)
    return TeacherJoin(wds.WebDataset(urls, shardshuffle=False, empty_check=False), TeacherFeatures(store, run), view)
