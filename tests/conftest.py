"""Shared test helpers (imported as ``from conftest import ...``): read built shards back as decoded samples; a
small built dataset fixture."""

from __future__ import annotations

import gc
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def read_shard(path: str | Path) -> dict[str, dict[str, bytes]]:
    """key -> {entry: bytes} for one tar shard, in file order."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, entry = m.name.split(".", 1)
            out.setdefault(key, {})[entry] = tf.extractfile(m).read()
    return out


def decode_entry(entry: str, data: bytes):
    """Decode one sample entry the way a consumer would."""
    if entry.endswith(".png"):
        return np.asarray(Image.open(io.BytesIO(data)))
    if entry.endswith(".npy"):
        return np.load(io.BytesIO(data))
    if entry.endswith(".json"):
        return json.loads(data)
    return data.decode()


def read_built(out: str | Path) -> dict[str, dict]:
    """key -> decoded sample dict (plus '__shard__') for every shard listed in a built dataset's manifest."""
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    samples = {}
    for shard in manifest["shards"]:
        for key, entries in read_shard(Path(out) / shard["name"]).items():
            assert key not in samples, f"duplicate key {key}"
            samples[key] = {e: decode_entry(e, b) for e, b in entries.items()} | {"__shard__": shard["name"]}
    return samples


def maxpool(mask: np.ndarray, k: int) -> np.ndarray:
    """Reference max-pool (kernel = stride = k) written independently of medprep."""
    h, w = mask.shape
    out = np.zeros((h // k, w // k), np.uint8)
    for i in range(h // k):
        for j in range(w // k):
            out[i, j] = mask[i * k:(i + 1) * k, j * k:(j + 1) * k].max() > 0
    return out


def convert_all(dataset: str, src: str | Path, **options) -> tuple[dict, list]:
    """sample id -> Loaded for every record a converter finds under ``src`` (no shards), and the discovery
    failures: for checking what a multi-sample converter (volumes, npz) yields."""
    from medprep.prep import SourceTree, get_converter

    conv = get_converter(dataset, **options)
    tree = SourceTree(src)
    records, failures = conv.discover(tree)
    out = {}
    for rec in records:
        out.update(conv.samples({f: tree.read(f) for f in rec.files()}, rec))
    return out, failures


@pytest.fixture(scope="session")
def tiny_drive(tmp_path_factory) -> Path:
    """A small built DRIVE dataset (2 train, 1 test samples of 64 x 64), shared read-only by the tests of a session:
    tests that damage it work on a copy."""
    from medprep.prep import build, synthetic

    tmp = tmp_path_factory.mktemp("tiny-drive")
    build("drive", synthetic.make("drive", tmp / "src", n_train=2, n_test=1), tmp / "shards", size=64)
    return tmp / "shards" / "drive"


@pytest.fixture()
def collect_clients():
    """Garbage-collect at the end of a test that used an object store: an s3fs/aiohttp client left to the
    collector logs "Unclosed client session" from its ``__del__`` wherever the collector runs next, and inside
    ``ast.parse`` (the layer tests) that trips CPython 3.11.7's "AST constructor recursion depth mismatch"
    (gh-106905)."""
    yield
    gc.collect()


def pytest_sessionfinish(session, exitstatus):
    """Collect the object-store clients that are garbage by now while pytest's streams are open, and keep asyncio's
    "Unclosed client session" (logged from aiohttp's ``__del__``) out of the closing lines."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    gc.collect()
