"""Loaders check every decoded entry against what it claims to be and name where it came from: a ``modality.cls``
outside the modality tables (99, -5, text), a ``patchN`` grid of the wrong shape, dtype or values, an image and mask
of different sizes or not the size the manifest records, an undecodable ``.npy`` or ``meta.json``: each raises one
error naming the shard, the key and the entry, through ``MedShards`` as through the ``Decoder``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from medprep.loaders import Decoder, MedShards
from medprep.loaders.fields import recorded_decoder
from medprep.manifests import open_dataset, sha256_bytes, tar_bytes


@pytest.fixture()
def built(tiny_drive):
    return tiny_drive


def _raw(built) -> dict:
    ds = open_dataset(built)
    return next(iter(ds.read_shard(ds.manifest.shards_of("train")[0])))


def _png(shape) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


CASES = [
    ("modality-99", "modality.cls", b"99", ["modality_id"], r"modality\.cls in .*: holds b'99', expected a modality "
                                                            r"id of the build's table \(0, 1, 2, "),
    ("modality--5", "modality.cls", b"-5", ["modality_id"], r"holds b'-5', expected a modality id"),
    ("modality-text", "modality.cls", b"fundus", ["modality_id"], r"holds b'fundus', expected a modality id"),
    ("patch-shape", "patch32.npy", _npy(np.zeros((3, 3), np.uint8)), ["image", "patch32"],
     r"patch32\.npy in .*: shape \(3, 3\), expected \(2, 2\) \(from the sample's image\.png, 64 x 64\)"),
    ("patch-values", "patch32.npy", _npy(np.full((2, 2), 7, np.uint8)), ["patch32"],
     r"patch32\.npy in .*: an array of shape \(2, 2\), dtype uint8, max 7, expected a 2-d uint8 0/1 grid"),
    ("patch-float", "patch32.npy", _npy(np.zeros((2, 2), np.float64)), ["patch32"], r"dtype float64"),
    ("patch-not-npy", "patch32.npy", b"garbage", ["patch32"], r"patch32\.npy in .*: not a \.npy array"),
    ("mask-size", "mask.png", _png((32, 64)), ["image", "mask"],
     r"mask\.png in .*: shape \(32, 64\), expected \(64, 64\) \(from the sample's image\.png"),
    ("mask-rgb", "mask.png", _png((64, 64, 3)), ["image", "mask"], r"mask\.png in .*: shape \(64, 64, 3\)"),
    ("image-size", "image.png", _png((32, 32, 3)), ["image"],
     r"image\.png in .*: 32 x 32 pixels, expected 64 x 64 \(the size its manifest records\)"),
    ("image-gray", "image.png", _png((64, 64)), ["image"], r"image\.png in .*: an image of shape \(64, 64\), "
                                                          r"expected an RGB image"),
    ("meta-not-json", "meta.json", b"{nope", ["meta"], r"meta\.json in .*: not JSON"),
    ("meta-list", "meta.json", b"[1]", ["meta"], r"meta\.json in .*: a JSON list, expected a JSON object"),
]


@pytest.mark.parametrize("case,entry,data,fields,message", CASES, ids=[c[0] for c in CASES])
def test_a_lying_entry_is_refused_naming_shard_key_and_entry(built, case, entry, data, fields, message):
    raw = _raw(built)
    decoder = recorded_decoder([open_dataset(built)], fields, None, None, None)
    decoder(dict(raw))  # the untouched sample decodes
    with pytest.raises(ValueError, match=message) as e:
        decoder({**raw, entry: data})
    assert f"{raw['__key__']}.{entry} in {raw['__url__']}" in str(e.value) and "medprep verify" in str(e.value)


def test_a_plain_decoder_checks_consistency_without_a_manifest(built):
    raw = _raw(built)
    assert Decoder(["image", "mask"])({**raw, "image.png": _png((32, 32, 3)), "mask.png": _png((32, 32))})["image"] \
        .shape == (3, 32, 32)  # no recorded size: only agreement among the entries
    with pytest.raises(ValueError, match=r"mask\.png in .*: shape \(64, 64\), expected \(32, 32\)"):
        Decoder(["image", "mask"])({**raw, "image.png": _png((32, 32, 3))})


def test_medshards_names_the_shard_and_key_of_a_bad_modality(built, tmp_path):
    """A shard rewritten with modality.cls 99 in one sample (manifest updated to match, as a hostile builder would):
    iterating the split fails on that sample, naming it."""
    import shutil

    root = tmp_path / "drive"
    shutil.copytree(built, root)
    ds = open_dataset(root)
    entry = ds.manifest.shards_of("train")[0]
    samples = list(ds.read_shard(entry))
    members = {}
    for i, s in enumerate(samples):
        for name, data in s.items():
            if not name.startswith("__"):
                members[f"{s['__key__']}.{name}"] = b"99" if (i == 1 and name == "modality.cls") else data
    blob = tar_bytes(members)
    (root / entry.name).write_bytes(blob)
    doc = json.loads((root / "manifest.json").read_text())
    for s in doc["shards"]:
        if s["name"] == entry.name:
            s.update(bytes=len(blob), sha256=sha256_bytes(blob))
    doc["generation"] = ""
    (root / "manifest.json").write_text(json.dumps(doc))
    bad = samples[1]["__key__"]
    with pytest.raises(ValueError, match=rf"{bad}\.modality\.cls in .*{entry.name}: holds b'99'"):
        list(MedShards(str(root), fields=["key", "modality_id"], shuffle=False))
