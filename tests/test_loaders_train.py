"""examples/train_student.py: a real training loop on shards built by the pipeline."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from medprep.loaders import MedShards, collate
from medprep.manifests.modalities import MODALITY_MAPS
from medprep.prep import build, synthetic

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_student.py"


@pytest.fixture(scope="module")
def example() -> dict:
    return runpy.run_path(str(EXAMPLE))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("train")
    out = []
    for name, sizes in (("drive", {"n_train": 6, "n_test": 1}), ("dsb2018", {"n": 6})):
        src = synthetic.make(name, root / "src" / name, **sizes)
        out.append(str(build(name, src, root, size=64, shard_samples=3).out))
    return out


def test_cli_runs_two_steps_with_finite_losses(example, tiny, tmp_path, capsys):
    history = example["main"](["--shards", *tiny, "--steps", "2", "--batch-size", "2", "--balance", "modality",
                               "--save", str(tmp_path / "student.pt")])
    assert len(history) == 2
    assert all(math.isfinite(v) for step in history for v in step.values())
    assert set(history[0]) == {"patch_bce", "mask_focal", "mask_dice", "total"}
    assert "step    2" in capsys.readouterr().out
    state = torch.load(tmp_path / "student.pt")
    assert "queries.weight" in state and state["queries.weight"].shape == (len(MODALITY_MAPS["default"]), 32)


def test_gradients_reach_every_parameter_and_the_loss_drops(example, tiny):
    torch.manual_seed(0)
    data = MedShards(tiny, fields=example["FIELDS"], shuffle=False)
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate)))
    model = example["TinyStudent"]()
    losses = example["student_loss"](model(batch["image"], batch["modality_id"]), batch)
    losses["total"].backward()
    used = set(batch["modality_id"].tolist())
    for name, p in model.named_parameters():
        grad = p.grad if name != "queries.weight" else p.grad[sorted(used)]
        assert grad is not None and grad.abs().sum() > 0, name
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):  # fit one fixed batch: the total loss must go down
        total = example["student_loss"](model(batch["image"], batch["modality_id"]), batch)["total"]
        first = first if first is not None else total.item()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.8 * first


def test_every_modality_id_of_every_table_has_a_query(example):
    """A CT or MR build (ids 6, 7) trains like any other: the student's table comes from the modality table."""
    ids = sorted({i for table in MODALITY_MAPS.values() for i in table.values()})
    out = example["TinyStudent"]()(torch.zeros(len(ids), 3, 64, 64), torch.tensor(ids))
    assert all(torch.isfinite(v).all() for v in out.values())
