"""medprep.loaders on shards built by the real pipeline from synthetic downloads."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medprep.loaders import (
    NORMALIZATIONS, PIXEL_MEAN, PIXEL_STD, Affine, Augment, Decoder, MedShards, MedShardsIndexed, collate,
    read_samples,
)
from medprep.loaders.partition import Blocks, Consumer, owned
from medprep.manifests import open_dataset
from medprep.manifests.pixels import patch_targets
from medprep.prep import build, synthetic

SIZE = 64
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> dict[str, Path]:
    """DRIVE train split (16 samples) built with 2, 4 and 8 samples per shard (8, 4 and 2 shards), and DSB-2018."""
    root = tmp_path_factory.mktemp("loader-shards")
    drive = synthetic.make("drive", root / "src", n_train=20, n_test=2)
    out = {}
    for per_shard in (2, 4, 8):
        out[f"drive{per_shard}"] = build("drive", drive, root / f"drive-{per_shard}", size=SIZE,
                                         shard_samples=per_shard).out
    dsb = synthetic.make("dsb2018", root / "src-dsb", n=10)
    out["dsb"] = build("dsb2018", dsb, root / "dsb", size=SIZE, shard_samples=3).out
    return out


def keys_of(ds: MedShards, workers: int, **kw) -> list[str]:
    loader = DataLoader(ds, batch_size=None, num_workers=workers, **kw)
    return [s["key"] for s in loader]


def test_shard_counts_cover_fewer_and_more_than_workers(shards):
    counts = {k: len(open_dataset(v).manifest.shards_of("train")) for k, v in shards.items() if k.startswith("drive")}
    assert counts == {"drive2": 8, "drive4": 4, "drive8": 2}
    assert open_dataset(shards["drive2"]).manifest.nsamples("train") == 16


def test_canonical_partitions_tile_the_epoch():
    """Blocks of the shuffled sample sequence cover every sample once, whatever the shard sizes and partitions;
    the consumers' partition ranges tile the partitions, whatever the numbers of ranks and workers."""
    rng = np.random.default_rng(0)
    for n_shards in range(1, 7):
        sizes = rng.integers(0, 5, n_shards).tolist()
        order = rng.permutation(n_shards)
        for partitions in (1, 3, 8, 64):
            got = Counter((s, j) for p in range(partitions) for s, a, b in Blocks(sizes, order, partitions).runs(p)
                          for j in range(a, b))
            assert got == Counter((s, j) for s in range(n_shards) for j in range(sizes[s])), (sizes, partitions)
    for world, workers in ((1, 1), (2, 3), (3, 1), (8, 8)):
        parts = [p for r in range(world) for w in range(workers) for p in owned(Consumer(r, world, w, workers), 64)]
        assert parts == list(range(64))
    with pytest.raises(ValueError, match="pass partitions>=72"):
        owned(Consumer(0, 9, 0, 8), 64)


@pytest.mark.parametrize("name", ["drive2", "drive4", "drive8"])
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 1, 3])
def test_every_sample_exactly_once(shards, name, world, workers):
    expected = open_dataset(shards[name]).keys("train")
    got = []
    for rank in range(world):
        got += keys_of(MedShards(shards[name], fields=["key"], seed=5, rank=rank, world_size=world), workers)
    assert Counter(got) == Counter(expected), f"{workers} workers x {world} ranks"
    assert len(got) == len(set(got)) == 16


def test_rank_read_from_environment(shards, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    got = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        got.append(keys_of(MedShards(shards["drive4"], fields=["key"]), 0))
    assert not set(got[0]) & set(got[1]) and len(got[0]) + len(got[1]) == 16
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="rank 2 / world_size 2"):
        MedShards(shards["drive4"])


def test_order_depends_on_seed_and_epoch_only(shards):
    def order(epoch, seed=0, workers=2):
        return keys_of(MedShards(shards["drive2"], fields=["key"], seed=seed, epoch=epoch, shuffle_buffer=4), workers)

    assert order(0) == order(0)
    assert order(1) == order(1)
    assert order(0) != order(1)
    assert order(0, seed=1) != order(0)
    assert sorted(order(0)) == sorted(order(1))


def test_set_epoch_reaches_persistent_workers(shards):
    ds = MedShards(shards["drive2"], fields=["key"], seed=3)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    first = [s["key"] for s in loader]
    ds.set_epoch(1)
    second = [s["key"] for s in loader]
    assert first == keys_of(MedShards(shards["drive2"], fields=["key"], seed=3, epoch=0), 2)
    assert second == keys_of(MedShards(shards["drive2"], fields=["key"], seed=3, epoch=1), 2)
    assert first != second


@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_ranks_yield_equal_batches(shards, workers):
    batches = []
    for rank in (0, 1):
        ds = MedShards(shards["drive8"], fields=["key", "mask"], resampled=True, epoch_samples=11, rank=rank,
                       world_size=2)
        assert len(ds) == 11
        loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate)
        got = list(loader)
        assert sum(len(b["key"]) for b in got) == 11
        assert set(k for b in got for k in b["key"]) <= set(open_dataset(shards["drive8"]).keys("train"))
        batches.append(len(got))
    assert batches[0] == batches[1]
    default = MedShards(shards["drive8"], fields=["key"], resampled=True, rank=0, world_size=2)
    assert len(default) == 8 and len(keys_of(default, 0)) == 8


def test_mixing_weights_and_modality_balance(shards):
    mixed = [shards["drive4"], shards["dsb"]]
    only_dsb = keys_of(MedShards(mixed, fields=["key"], resampled=True, epoch_samples=20, weights=[0, 1]), 0)
    assert len(only_dsb) == 20 and all(k.startswith("dsb2018-") for k in only_dsb)
    ds = MedShards(mixed, fields=["key", "modality_id"], resampled=True, epoch_samples=24, balance="modality",
                   seed=2)
    for batch in DataLoader(ds, batch_size=4, collate_fn=collate):
        assert sorted(batch["modality_id"].tolist()) == [2, 2, 5, 5]  # fundus and microscopy, two each
    with pytest.raises(ValueError, match="need resampled=True"):
        MedShards(mixed, weights=[1, 1])
    with pytest.raises(ValueError, match="one per source"):
        MedShards(mixed, resampled=True, weights=[1])


def test_exact_mode_mixes_every_sample_of_every_source(shards):
    mixed = [shards["drive4"], shards["dsb"]]
    expected = open_dataset(shards["drive4"]).keys("train") + open_dataset(shards["dsb"]).keys("train")
    got = []
    for rank in (0, 1):
        got += keys_of(MedShards(mixed, fields=["key"], rank=rank, world_size=2), 3)
    assert Counter(got) == Counter(expected)


def test_only_requested_fields_are_read_and_decoded(shards):
    assert Decoder(["key"]).entries == {"modality.cls"}
    assert Decoder(["image", "patch16"]).entries == {"image.png", "patch16.npy", "modality.cls"}
    assert Decoder(["patch16"], augment=Augment(affine=Affine())).entries == {"patch16.npy", "mask.png",
                                                                             "modality.cls"}
    url = open_dataset(shards["drive4"]).shard_urls("train")[0]
    raw = next(read_samples(url, {"mask.png", "modality.cls"}))
    assert set(raw) == {"__key__", "__url__", "mask.png", "modality.cls"}
    sample = next(iter(MedShards(shards["drive4"], fields=["mask", "key"])))
    assert set(sample) == {"mask", "key"}
    with pytest.raises(ValueError, match="unknown fields"):
        MedShards(shards["drive4"], fields=["image", "contour"])
    with pytest.raises(KeyError, match="has no inst.png"):
        next(iter(MedShards(shards["drive4"], fields=["inst"])))


def test_tensor_types_and_values_match_the_tar(shards):
    fields = ["image", "mask", "patch16", "patch32", "patch64", "fov", "modality_id", "meta", "key"]
    ds = MedShardsIndexed(shards["drive4"], "train", fields, normalize="none")
    s = ds[3]
    assert s["image"].shape == (3, SIZE, SIZE) and s["image"].dtype == torch.float32
    assert s["image"].max() > 1 and s["image"].min() >= 0
    for f, n in (("mask", SIZE), ("fov", SIZE), ("patch16", 4), ("patch32", 2), ("patch64", 1)):
        assert s[f].shape == (1, n, n) and s[f].dtype == torch.float32 and set(s[f].unique().tolist()) <= {0, 1}
    mask = s["mask"][0].numpy().astype(bool)
    for n in (16, 32, 64):
        assert np.array_equal(s[f"patch{n}"][0].numpy(), patch_targets(mask, n))
    assert s["modality_id"].item() == 2 and s["modality_id"].dtype == torch.int64
    assert s["meta"]["dataset"] == "drive" and s["key"] == "drive-" + s["meta"]["source_id"]
    inst = MedShardsIndexed(shards["dsb"], "train", ["inst", "mask"])[0]
    assert inst["inst"].dtype == torch.int32 and inst["inst"].max() >= 1
    assert torch.equal(inst["inst"] > 0, inst["mask"] > 0)


def test_normalizations(shards):
    raw = {n: MedShardsIndexed(shards["drive4"], "train", ["image"], normalize=n)[0]["image"] for n in NORMALIZATIONS}
    x = raw["none"]
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    assert torch.allclose(raw["unit"], x / 255)
    assert torch.allclose(raw["sam"], (x - mean) / std, atol=1e-5)
    assert torch.allclose(raw["esp-medsam"], (x - mean) / mean, atol=1e-5)
    with pytest.raises(ValueError, match="normalize='imagenet'"):
        MedShards(shards["drive4"], normalize="imagenet")


def test_indexed_matches_stream_and_manifest(shards):
    ix = MedShardsIndexed([shards["drive4"], shards["dsb"]], "train", ["key", "image", "patch32"])
    expected = open_dataset(shards["drive4"]).keys("train") + open_dataset(shards["dsb"]).keys("train")
    assert len(ix) == len(expected) and ix.keys() == expected
    stream = list(MedShards([shards["drive4"], shards["dsb"]], fields=["key", "image", "patch32"], shuffle=False))
    assert [s["key"] for s in stream] == expected
    for i in (0, 7, len(ix) - 1, -1):
        assert torch.equal(ix[i]["image"], stream[i]["image"]) and ix[i]["key"] == stream[i]["key"]
    with pytest.raises(IndexError):
        ix[len(ix)]
    loader = DataLoader(ix, batch_size=5, num_workers=2, collate_fn=collate)
    assert [k for b in loader for k in b["key"]] == expected
    with pytest.raises(FileNotFoundError, match="no wids index"):
        MedShardsIndexed(shards["drive4"], "holdout")


def test_errors_name_the_problem(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        MedShards(tmp_path)
    with pytest.raises(ValueError, match="has no 'holdout' samples; its splits are train, valid, test"):
        MedShards(shards["drive4"], split="holdout")
    assert len(MedShards(os.path.join(shards["drive4"], "manifest.json"))) == 16


# ---------------------------------------------------------------------------------------------------------------
# augmentation


def l_shape(h: int = 64, w: int = 64) -> dict[str, np.ndarray]:
    """An asymmetric L-shaped mask, painted red into a noisy image; FOV and instance map of the same shape."""
    mask = np.zeros((h, w), bool)
    mask[8:50, 6:18] = True
    mask[40:50, 6:44] = True
    rng = np.random.default_rng(0)
    image = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
    image[..., 0] = np.where(mask, 255, 0)
    return {"image": image, "mask": mask, "fov": mask.copy(), "inst": mask.astype(np.uint16) * 7,
            **{f"patch{n}": patch_targets(mask, n) for n in (8, 16, 32)}}


@pytest.mark.parametrize("aug", [Augment(1, 0, 0), Augment(0, 1, 0), Augment(0, 0, 1), Augment(),
                                 Augment(affine=Affine(degrees=30, p=1.0)), Augment(0, 0, 0, Affine(p=1.0))])
def test_augment_keeps_targets_consistent(aug):
    base = l_shape()
    changed = 0
    for seed in range(12):
        out = aug(dict(base), np.random.default_rng(seed))
        red = out["image"][..., 0] > 127
        mismatch = np.count_nonzero(red != out["mask"])
        if aug.affine is None:
            assert mismatch == 0
        else:  # linear vs nearest interpolation may disagree on a few boundary pixels; a 2-pixel shift: ~200
            assert mismatch <= 0.01 * np.count_nonzero(out["mask"])
        assert np.array_equal(out["fov"], out["mask"]) and np.array_equal(out["inst"] == 7, out["mask"])
        for n in (8, 16, 32):
            assert np.array_equal(out[f"patch{n}"], patch_targets(out["mask"], n))
        changed += not np.array_equal(out["mask"], base["mask"])
    assert changed >= 6


def test_augment_rotates_non_square_grids_exactly():
    mask = np.zeros((32, 64), bool)
    mask[2:10, 40:60] = True
    arrays = {"mask": mask, "patch16": patch_targets(mask, 16)}
    for seed in range(8):
        out = Augment(0.5, 0.5, 1.0)(dict(arrays), np.random.default_rng(seed))
        assert np.array_equal(out["patch16"], patch_targets(out["mask"], 16))


D4 = [lambda a, k=k, f=f: np.rot90(np.flip(a, 1) if f else a, k, axes=(0, 1)) for k in range(4) for f in (0, 1)]


def test_augmented_stream_stays_aligned_with_the_unaugmented_one(shards):
    fields = ["image", "mask", "patch16", "patch32", "fov", "key"]
    plain = {s["key"]: s for s in MedShards(shards["drive4"], fields=fields, normalize="none", shuffle=False)}
    aug = MedShards(shards["drive4"], fields=fields, normalize="none", shuffle=False, augment=Augment(), seed=1)
    seen = Counter()
    for s in aug:
        p = plain[s["key"]]
        img, pimg = s["image"].permute(1, 2, 0).numpy(), p["image"].permute(1, 2, 0).numpy()
        ops = [i for i, op in enumerate(D4) if np.array_equal(op(pimg), img)]
        assert len(ops) == 1, "the synthetic image is asymmetric: exactly one dihedral op maps it"
        op = D4[ops[0]]
        seen[ops[0]] += 1
        for f in ("mask", "fov", "patch16", "patch32"):
            assert np.array_equal(op(p[f][0].numpy()), s[f][0].numpy()), f
    assert len(seen) >= 3
    warped = MedShards(shards["drive4"], fields=["mask", "patch16", "patch32"], augment=Augment(
        affine=Affine(degrees=40, scale=(0.7, 1.3), translate=0.2, p=1.0)))
    for s in warped:
        mask = s["mask"][0].numpy().astype(bool)
        for n in (16, 32):
            assert np.array_equal(s[f"patch{n}"][0].numpy(), patch_targets(mask, n))


def test_augmentation_is_deterministic_per_seed_and_epoch(shards):
    def masks(epoch):
        ds = MedShards(shards["drive4"], fields=["mask", "key"], augment=Augment(), seed=4, epoch=epoch)
        return {s["key"]: s["mask"] for s in DataLoader(ds, batch_size=None, num_workers=2)}

    a, b, c = masks(0), masks(0), masks(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_meta_and_keys_are_lists_after_collate(shards):
    batch = next(iter(DataLoader(MedShards(shards["dsb"], fields=["meta", "key", "mask"]), batch_size=3,
                                 collate_fn=collate)))
    assert isinstance(batch["meta"], list) and isinstance(batch["key"], list) and batch["mask"].shape == (3, 1, 64, 64)
    assert json.dumps(batch["meta"][0])


def test_fsspec_urls(shards):
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in Path(shards["drive4"]).iterdir():
        if f.is_file():
            fs.pipe(f"/loader-test/drive/{f.name}", f.read_bytes())
    url = "memory://loader-test/drive"
    local = list(MedShards(shards["drive4"], fields=["key", "mask"], seed=1))
    remote = list(MedShards(url, fields=["key", "mask"], seed=1))
    assert [s["key"] for s in remote] == [s["key"] for s in local]
    assert all(torch.equal(a["mask"], b["mask"]) for a, b in zip(local, remote))
    ix = MedShardsIndexed(url, "train", ["key", "image"])
    assert ix.keys() == open_dataset(shards["drive4"]).keys("train")
    assert torch.equal(ix[5]["image"], MedShardsIndexed(shards["drive4"], "train", ["image"])[5]["image"])


def test_damaged_entry_is_named():
    raw = {"__key__": "drive-21_training", "__url__": "shards/train-000000.tar", "image.png": b"\x89PNG broken",
           "modality.cls": b"2"}
    with pytest.raises(ValueError, match=r"drive-21_training.image.png in shards/train-000000.tar is not a decodable"):
        Decoder(["image"])(raw)


def _ddp_rank(rank: int, root: str, rendezvous: str, out: str) -> None:
    """One process of a 2-rank gloo group: reads its part of an exact and of a resampled epoch."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        exact = keys_of(MedShards(root, fields=["key"]), 2)
        resampled = DataLoader(MedShards(root, fields=["key"], resampled=True, epoch_samples=7), batch_size=2,
                               num_workers=2, collate_fn=collate)
        batches = torch.tensor([len(list(resampled))])
        torch.distributed.all_reduce(batches, op=torch.distributed.ReduceOp.MAX)
        Path(out).write_text(json.dumps({"exact": exact, "resampled": len(list(resampled)),
                                         "max_batches": int(batches)}))
    finally:
        torch.distributed.destroy_process_group()


def test_real_process_group(shards, tmp_path):
    """Two ranks in a real torch.distributed (gloo) group, rank and world size taken from the group."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ddp_rank, args=(r, str(shards["drive8"]), str(tmp_path / "rdv"),
                                                 str(tmp_path / f"rank{r}.json"))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert Counter(got[0]["exact"] + got[1]["exact"]) == Counter(open_dataset(shards["drive8"]).keys("train"))
    assert got[0]["resampled"] == got[1]["resampled"] == got[0]["max_batches"] == 4  # 7 samples: 2 workers, 4 + 3
