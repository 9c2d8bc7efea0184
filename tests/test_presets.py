"""Build presets (medprep.prep.presets): explicit options win, converter options apply where taken, the README
table is generated from the tables, and every preset's parameters reach the manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import read_built
from medprep.loaders import Augment, MedShards, MedShardsIndexed
from medprep.prep import BuildParams, build
from medprep.prep.datasets import make_fake, registered
from medprep.prep.presets import OPTION, PRESETS, apply_preset, get_preset, markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_explicit_values_override_a_preset():
    got = apply_preset("litemedsam", {"size": 512, "resize": None, "options": {"multilabel": "binary"}},
                       takes=("multilabel", "min_object_pixels", "modality"))
    assert got["size"] == 512  # given explicitly
    assert got["resize"] == "longest"  # None: not given, the preset's
    assert got["options"] == {"multilabel": "binary", "min_object_pixels": 10}
    assert got["preset"] == "litemedsam" and got["box_jitter"] == 5 and got["prompts"] == "boxes"


def test_converter_options_apply_only_where_the_converter_takes_them():
    got = apply_preset("litemedsam", {}, takes=())
    assert "options" not in got
    assert apply_preset(None, {"size": 64}) == {"size": 64}  # no preset: unchanged, nothing recorded


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="esp-medsam, litemedsam, medsam, sam"):
        get_preset("sam2")


def test_every_setting_names_its_source():
    for preset in PRESETS.values():
        assert preset.source
        for key, setting in preset.settings.items():
            assert setting.source, (preset.name, key)


def test_readme_table_is_the_generated_one():
    text = README.read_text()
    m = re.search(r"<!-- presets: generated[^\n]*-->\n(.*?)\n<!-- presets: end -->", text, re.S)
    assert m, "README.md lacks the generated presets section"
    assert m.group(1) == markdown_table(), "README preset table is stale: paste medprep.prep.presets.markdown_table()"
    for name, preset in PRESETS.items():
        for key in preset.settings:
            assert (key[len(OPTION):] if key.startswith(OPTION) else key.replace("_", "-")) in m.group(1)


# which fake dataset shows all of a preset's settings: converter options exist for slices of volumes only
PRESET_DATASET = {"esp-medsam": "drive", "litemedsam": "volumes", "medsam": "volumes", "sam": "drive"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_presets_parameters_appear_in_the_manifest(name, tmp_path):
    dataset = PRESET_DATASET[name]
    cls = registered()[dataset]
    src = make_fake(dataset, tmp_path / "src")
    result = build(dataset, src, tmp_path / "shards", preset=name, size=64, **cls.fake_options)
    params = json.loads((result.out / "manifest.json").read_text())["params"]
    assert params["preset"] == name
    assert params["size"] == 64  # given explicitly: overrides the preset
    for key, setting in get_preset(name).settings.items():
        if key == "size":
            continue
        got = params["options"][key[len(OPTION):]] if key.startswith(OPTION) else params[key]
        want = list(setting.value) if isinstance(setting.value, tuple) else setting.value
        assert got == want, key
    if "interpolation" in params:
        for sample in read_built(result.out).values():
            assert sample["meta.json"]["interpolation"]["image"] == params["interpolation"]


def test_recipe_fields_are_recorded_only_when_set(tmp_path):
    src = make_fake("drive", tmp_path / "src")
    params = json.loads((build("drive", src, tmp_path / "a", size=64).out / "manifest.json").read_text())["params"]
    assert not {"preset", "interpolation", "normalize", "prompts", "box_jitter"} & set(params)
    with pytest.raises(ValueError, match="--normalize 'max': expected one of"):
        BuildParams.of("drive", normalize="max")
    with pytest.raises(ValueError, match="--preset 'x'"):
        BuildParams.of("drive", preset="x")


def test_loaders_default_to_what_the_build_recorded(tmp_path):
    """A litemedsam build records minmax, boxes and a jitter of 5: a MedShards without those arguments follows
    them; minmax uses the unpadded region's range and keeps the padding 0, through flips and turns too."""
    src = make_fake("drive", tmp_path / "src")
    lite = build("drive", src, tmp_path / "lite", preset="litemedsam", size=64).out
    plain = build("drive", src, tmp_path / "plain", size=64).out
    data = MedShardsIndexed(lite, "train", fields=None)
    assert data.decoder.normalize == "minmax" and data.decoder.prompts.box_jitter == 5
    assert "boxes" in data.decoder.fields
    assert MedShardsIndexed(plain, "train").decoder.normalize == "sam"
    with pytest.raises(ValueError, match="different normalize values"):
        MedShards([lite, plain], "train")
    raw = {s["meta.json"]["source_id"]: s for s in read_built(lite).values()}
    for augment in (None, Augment(hflip=1, vflip=1, rot90=1)):
        data = MedShardsIndexed(lite, "train", ["image", "meta"], augment=augment)
        for i in range(len(data)):
            got = data[i]
            h, w = got["meta"]["valid_hw"]
            img = raw[got["meta"]["source_id"]]["image.png"].astype(np.float32)
            lo, hi = img[:h, :w].min(), img[:h, :w].max()
            want = np.zeros_like(img)
            want[:h, :w] = (img[:h, :w] - lo) / max(hi - lo, 1e-8)
            want = np.moveaxis(want, 2, 0)
            if augment is not None:  # both flips, then a quarter turn of 1 to 3
                turned = [np.rot90(np.flip(np.flip(want, 2), 1), r, axes=(1, 2)) for r in (1, 2, 3)]
                assert any(np.allclose(got["image"].numpy(), t, atol=1e-6) for t in turned)
            else:
                assert (w < 64 or h < 64) and np.allclose(got["image"].numpy(), want, atol=1e-6)
