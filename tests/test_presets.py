"""Build presets (medprep.prep.presets): explicit options win, converter options apply where taken, the README
table is generated from the tables, and every preset's parameters reach the manifest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
