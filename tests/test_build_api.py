"""The build's Python API: one validated BuildParams, ``out`` as the parent folder, progress as events."""

from __future__ import annotations

import pytest

from medprep.prep import BuildParams, InputDone, Planned, Published, TaskDone, build
from medprep.prep.datasets import make_fake


@pytest.mark.parametrize("kw, message", [
    ({"size": 4}, "--size 4: expected 8..8192"),
    ({"resize": "crop"}, "--resize 'crop': expected one of stretch, longest"),
    ({"size": 64, "patch_sizes": (16, 24)}, r"--patch-sizes \[24\] must divide --size 64"),
    ({"split_rule": "random"}, "--split-rule 'random': expected one of official, 811, test"),
    ({"split_rule": "file"}, "--split-rule file needs --split-file"),
    ({"shard_bytes": 0}, "--shard-bytes and --shard-samples must be positive"),
    ({"shard_samples": 0}, "--shard-bytes and --shard-samples must be positive"),
    ({"modality_map": "mine"}, "--modality-map 'mine': expected one of default, esp-medsam"),
    ({"colour": "red"}, "does not take colour"),
])
def test_params_are_validated_on_construction(kw, message):
    with pytest.raises(ValueError, match=message):
        BuildParams.of("drive", **kw)


def test_unknown_dataset_and_keywords_route_to_options():
    with pytest.raises(ValueError, match="unknown --dataset 'nope'"):
        BuildParams("nope")
    options = {"images": "imgs/*", "masks": "m/{stem}.png", "modality": "fundus", "name": "mine"}
    p = BuildParams.of("folder", size=64, split_file=None, **options)
    assert p == BuildParams("folder", size=64, options=options) and p.options == options and p.modality_id == 2


def test_out_is_the_parent_and_progress_comes_as_events(tmp_path):
    src = make_fake("dsb2018", tmp_path / "src", n=5)
    events: list[object] = []
    params = BuildParams("dsb2018", size=64, shard_samples=2)
    result = build(params, src, tmp_path / "shards", on_event=events.append)
    assert result.out == tmp_path / "shards" / "dsb2018" and (result.out / "manifest.json").exists()
    planned, *running, published = events
    assert planned == Planned("dsb2018", total_samples=5, tasks=3, resumed_samples=0)
    done = [e for e in running if isinstance(e, TaskDone)]
    inputs = [e for e in running if isinstance(e, InputDone)]  # in-process runs report every input as it is done
    assert len(done) + len(inputs) == len(running) and sum(e.planned for e in done) == 5
    assert sum(e.samples for e in done) == sum(e.samples for e in inputs) == result.manifest.counts["samples"] == 5
    assert running.index(done[0]) == 2 and not any(e.failed for e in inputs)  # a task's inputs come before it
    assert published == Published(result.out)
    again = build("dsb2018", src, tmp_path / "shards", size=64, shard_samples=2)  # the same object, by keywords
    assert again.reused
    with pytest.raises(TypeError, match="one or the other"):
        build(params, src, tmp_path / "shards", size=32)
