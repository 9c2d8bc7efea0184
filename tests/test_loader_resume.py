"""Mid-epoch resume of MedShards, in the style of torchdata's StatefulDataLoader tests: a loader restored from its
state after k batches yields exactly the rest of the uninterrupted run; merged states continue an epoch on other
numbers of ranks and workers; a training process killed with SIGKILL resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import pickle
import random
import runpy
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from medprep.loaders import Augment, MedShards, MedShardsIndexed, collate, merge_states
from medprep.manifests import open_dataset
from medprep.prep import build, synthetic

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_student.py"
pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> list[str]:
    """DRIVE (16 train samples in shards of 3) and DSB-2018 (shards of 3): two modalities, uneven shards."""
    root = tmp_path_factory.mktemp("resume")
    drive = synthetic.make("drive", root / "src-drive", n_train=20, n_test=1)
    dsb = synthetic.make("dsb2018", root / "src-dsb", n=10)
    return [str(build("drive", drive, root, size=64, shard_samples=3).out),
            str(build("dsb2018", dsb, root, size=64, shard_samples=3).out)]


def all_keys(sources: list[str]) -> list[str]:
    return [k for s in sources for k in open_dataset(s).keys("train")]


MODES = {
    "exact": {"shuffle_buffer": 4, "partitions": 6},
    "resampled-balanced": {"resampled": True, "balance": "modality", "epoch_samples": 14, "shuffle_buffer": 6},
    "resampled-weighted": {"resampled": True, "weights": [1, 3], "epoch_samples": 12, "shuffle_buffer": 6},
}


def reader(sources, mode: str, rank: int = 0, world: int = 1, **kw) -> MedShards:
    return MedShards(sources, fields=["key", "modality_id"], rank=rank, world_size=world,
                     **{"seed": 7, "epoch": 1, **MODES[mode], **kw})


def loader(ds, workers: int) -> StatefulDataLoader:
    return StatefulDataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)


def keys(batches) -> list[list[str]]:
    return [b["key"] for b in batches]


@pytest.mark.parametrize("mode", ["exact", "resampled-balanced"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_resume_after_k_batches_yields_the_rest_of_the_run(mixed, mode, workers, world):
    """Interrupt after 0, 1 and k batches: the restored loader's batches are the uninterrupted run's remaining
    ones, batch for batch (states taken along one run, passed through JSON and pickle)."""
    for rank in range(world):
        run = loader(reader(mixed, mode, rank, world), workers)
        full, states = [], {}
        it = iter(run)
        k = 3
        for step in range(100):
            if step in (0, 1, k):
                states[step] = pickle.loads(pickle.dumps(json.loads(json.dumps(run.state_dict()))))
            batch = next(it, None)
            if batch is None:
                break
            full.append(batch["key"])
        assert len(full) > k + 1
        for step, saved in states.items():
            restored = loader(reader(mixed, mode, rank, world), workers)
            restored.load_state_dict(saved)
            assert keys(restored) == full[step:], f"rank {rank}/{world}, {workers} workers, resumed at {step}"
        if mode == "resampled-balanced":  # two modalities, batches of two: one of each in every batch
            assert all(len({k.split("-")[0] for k in b}) == 2 for b in full if len(b) == 2)


@pytest.mark.parametrize("mode", list(MODES))
def test_plain_loop_resume_with_augmentation(mixed, mode):
    """No DataLoader: ``ds.state_dict()`` after n samples; a new reader loading it yields the same remaining samples,
    augmented identically (augmentation draws depend on the sample's place in the epoch, not on the reader)."""
    def make():
        return MedShards(mixed, fields=["key", "mask"], augment=Augment(), seed=3, rank=1, world_size=2,
                         **MODES[mode])

    full = [(s["key"], s["mask"]) for s in make()]
    for n in (0, 1, 5, len(full)):
        ds = make()
        it = iter(ds)
        head = [next(it)["key"] for _ in range(n)]
        saved = json.loads(json.dumps(ds.state_dict()))
        resumed = make()
        resumed.load_state_dict(saved)
        rest = [(s["key"], s["mask"]) for s in resumed]
        assert head == [k for k, _ in full[:n]]
        assert [k for k, _ in rest] == [k for k, _ in full[n:]]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, full[n:]))
    assert len(json.dumps(saved)) < 2000  # small: no sample lists


def test_indexed_resumes_through_the_sampler_state(mixed):
    """MedShardsIndexed keeps no state (sample i is a pure function of i and the seed): StatefulDataLoader's
    sampler state resumes it."""
    def run() -> StatefulDataLoader:
        ds = MedShardsIndexed(mixed, "train", ["key"])
        return StatefulDataLoader(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(4),
                                  collate_fn=collate)

    full = keys(run())
    first = run()
    it = iter(first)
    head = [next(it)["key"] for _ in range(2)]
    restored = run()
    restored.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))  # the sampler's holds a tensor
    assert head + keys(restored) == full and sorted(k for b in full for k in b) == sorted(all_keys(mixed))


def test_resume_skips_consumed_shards_without_reading_them(mixed, tmp_path):
    """Shards whose samples were all yielded are not opened on resume: they may even be gone."""
    import shutil

    copies = [shutil.copytree(s, tmp_path / Path(s).name) for s in mixed]
    make = lambda: MedShards([str(c) for c in copies], fields=["key"], seed=2, **MODES["exact"])  # noqa: E731
    full = [s["key"] for s in make()]
    ds = make()
    it = iter(ds)
    seen = {next(it)["key"] for _ in range(len(full) * 2 // 3)}
    saved = ds.state_dict()
    gone = 0
    for c in copies:
        built = open_dataset(c)
        by_shard: dict[str, set[str]] = {}
        for row in built.samples("train"):
            by_shard.setdefault(row["shard"], set()).add(row["key"])
        for shard, members in by_shard.items():
            if members <= seen:
                (c / shard).unlink()
                gone += 1
    assert gone >= 2
    resumed = make()
    resumed.load_state_dict(saved)
    assert [s["key"] for s in resumed] == full[len(seen):]


def stateful_epoch_part(sources, rank: int, world: int, workers: int, batches: int) -> tuple[list[str], dict]:
    """One rank of a run: ``batches`` batches, then the loader's state (workers have prefetched beyond them)."""
    run = loader(reader(sources, "exact", rank, world), workers)
    it = iter(run)
    seen = [k for _ in range(batches) for k in next(it)["key"]]
    return seen, run.state_dict()


@pytest.mark.parametrize("world, workers", [(3, 1), (1, 0)])
def test_merged_states_continue_on_other_ranks_and_workers(mixed, world, workers):
    """2 ranks x 2 workers stopped mid-epoch (rank 0 after 2 batches, rank 1 after 3; prefetched batches count as
    not yielded) -> ``merge_states`` -> ``world`` ranks x ``workers`` workers: every sample of the epoch exactly
    once."""
    seen, states = [], []
    for rank, batches in ((0, 2), (1, 3)):
        part, saved = stateful_epoch_part(mixed, rank, 2, 2, batches)
        seen += part
        states.append(json.loads(json.dumps(saved)))
    merged = json.loads(json.dumps(merge_states(states)))
    assert all(c is not None for c in merged["cursors"])
    rest = []
    for rank in range(world):
        ds = reader(mixed, "exact", rank, world)
        ds.load_state_dict(merged)
        rest += [k for b in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)
                 for k in b["key"]]
    assert Counter(seen + rest) == Counter(all_keys(mixed))
    assert len(seen) == 10 and len(rest) == len(all_keys(mixed)) - 10


def test_merge_states_refuses_partial_or_mixed_states(mixed):
    states = [reader(mixed, "exact", r, 2).state_dict() for r in (0, 1)]
    assert merge_states(states)["cursors"] == [0] * 6
    with pytest.raises(ValueError, match=r"no state holds partitions \[3, 4, 5\].*every rank"):
        merge_states(states[:1])
    with pytest.raises(ValueError, match="partition 0 is in two of the states"):
        merge_states([states[0], *states])
    with pytest.raises(ValueError, match="disagree on \\['seed'\\]"):
        merge_states([states[0], reader(mixed, "exact", 1, 2, seed=8).state_dict()])
    with pytest.raises(ValueError, match="a resampled epoch is drawn per reader"):
        merge_states([reader(mixed, "resampled-balanced").state_dict()])
    with pytest.raises(ValueError, match="no cursor for partition 3.*merge_states"):
        single = reader(mixed, "exact")
        single.load_state_dict(states[0])
        list(single)
    with pytest.raises(ValueError, match="with seed=7, but .* has seed=8"):
        reader(mixed, "exact", seed=8).load_state_dict(states[0])
    with pytest.raises(ValueError, match="snapshot_every_n_steps=1"):
        merge_states([{"_snapshot": {}, "_steps_since_snapshot": 2}])


def test_set_epoch_drops_a_state_of_another_epoch(mixed):
    ds = reader(mixed, "exact")
    it = iter(ds)
    head = [next(it)["key"] for _ in range(4)]
    saved = ds.state_dict()
    resumed = reader(mixed, "exact")
    resumed.load_state_dict(saved)
    assert resumed.epoch == 1 and len(list(resumed)) == len(all_keys(mixed)) - 4
    assert sorted(s["key"] for s in resumed) == sorted(all_keys(mixed))  # the next iteration: the epoch whole
    resumed.load_state_dict(saved)
    resumed.set_epoch(2)
    assert len(list(resumed)) == len(all_keys(mixed)) and len(head) == 4


@pytest.mark.slow
def test_training_killed_with_sigkill_resumes_from_its_checkpoint(mixed, tmp_path):
    """examples/train_student.py checkpoints model, optimiser and loader state every step; killed at a random step
    with SIGKILL and restarted, its steps (the last run of each) equal an uninterrupted run's, and the epoch's
    samples each come exactly once."""
    options = ["--shards", *mixed, "--exact", "--batch-size", "3", "--workers", "2", "--steps", "8"]

    def log_of(path: Path) -> dict[int, list[str]]:
        steps: dict[int, list[str]] = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            steps[row["step"]] = row["keys"]  # a step redone after the kill: its last run counts
        return steps

    runpy.run_path(str(EXAMPLE))["main"]([*options, "--log-keys", str(tmp_path / "ref.jsonl")])  # uninterrupted
    reference = log_of(tmp_path / "ref.jsonl")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ckpt, log = tmp_path / "ckpt.pt", tmp_path / "run.jsonl"
    run = [sys.executable, str(EXAMPLE), *options, "--checkpoint", str(ckpt), "--log-keys", str(log)]
    kill_after = random.Random().randint(1, 5)
    proc = subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith(f"step {kill_after:4d}"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(ckpt, weights_only=False)
    assert 1 <= saved["step"] <= 8
    done = subprocess.run(run, check=True, env=env, capture_output=True, text=True)
    assert f"resumed at step {saved['step']}" in done.stdout
    steps = log_of(log)
    assert steps == reference, f"killed after step {kill_after}"
    epoch = [k for s in range(1, 9) for k in steps[s]][:len(all_keys(mixed))]
    assert Counter(epoch) == Counter(all_keys(mixed))
