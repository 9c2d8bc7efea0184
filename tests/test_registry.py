"""The registry test battery (torchvision ``datasets_utils.py`` style): every registered dataset builds from its own
fake data with the counts its module declares, and the built samples keep the sample-format promises.

The battery is parametrized over the registry at collection: a converter registered without a fake maker or
without expected counts fails the collection, so a new dataset module cannot skip its fake data.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import maxpool, read_built

from medprep.prep import LayoutError, build
from medprep.prep.datasets import (
    REGISTRY, Converter, get_converter, make_fake, modality_id, register, registered,
)

SIZE = 64
PATCHES = (16, 32, 64)
SOURCE_ATTRS = ("homepage", "license", "citation")
META_FIELDS = {"dataset", "split", "modality", "modality_id", "source_id", "source", "sha256", "original_hw", "size",
               "resize", "interpolation", "valid_hw", "foreground"}


def battery() -> list[str]:
    """The datasets the battery runs over: every registered one, each of which must declare its fake data, and
    each public dataset (one with a domain) where it comes from: official page, licence note and citation."""
    missing = [f"{name} ({cls.__module__}.{cls.__qualname__})" for name, cls in registered().items()
               if cls.fake is None or not cls.fake_counts]
    assert not missing, (f"registered without fake data: {', '.join(missing)}; give each converter a fake() maker "
                         f"and the fake_counts its default fake data builds to")
    lacking = {name: [a for a in SOURCE_ATTRS if not getattr(cls, a)] for name, cls in registered().items()
               if cls.domain is not None}
    unsourced = [f"{name} ({REGISTRY[name].__module__}.{REGISTRY[name].__qualname__}: {', '.join(attrs)})"
                 for name, attrs in lacking.items() if attrs]
    assert not unsourced, (f"registered without its source: {'; '.join(unsourced)}; declare homepage, license "
                           f"('see the official page' where the terms are not plain) and citation")
    return list(registered())


@pytest.fixture(scope="module", params=battery())
def built(request, tmp_path_factory):
    name = request.param
    cls = REGISTRY[name]
    root = tmp_path_factory.mktemp(name)
    src = make_fake(name, root / "src")
    conv = get_converter(name, **cls.fake_options)
    result = build(name, src, root / "out", size=SIZE, patch_sizes=PATCHES, shard_samples=4, **cls.fake_options)
    return cls, conv, root / "out" / conv.name, result


def test_counts_per_split_and_failures(built):
    cls, _, out, result = built
    counts = result.manifest.counts
    assert counts["splits"] == cls.fake_counts
    assert counts["failures"] == cls.fake_failures == len(result.failures)
    assert counts["inputs"] == counts["converted"] + counts["failures"]
    samples = read_built(out)
    assert len(samples) == counts["samples"] == sum(cls.fake_counts.values())
    for split, n in cls.fake_counts.items():
        assert sum(s["meta.json"]["split"] == split for s in samples.values()) == n


def test_keys_unique_and_tar_safe(built):
    _, conv, out, _ = built
    samples = read_built(out)  # asserts no key twice across shards
    assert len((out / "samples.jsonl").read_text().splitlines()) == len(samples)
    assert len({s["meta.json"]["source_id"] for s in samples.values()}) == len(samples)
    for key in samples:
        assert re.fullmatch(rf"{re.escape(conv.name)}-[A-Za-z0-9_-]+", key), key


def test_masks_binary_and_patch_targets_exact(built):
    *_, out, _ = built
    foreground = 0.0
    for key, s in read_built(out).items():
        mask = s["mask.png"]
        assert s["image.png"].shape == (SIZE, SIZE, 3) and s["image.png"].dtype == np.uint8
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}, key
        for k in PATCHES:
            assert s[f"patch{k}.npy"].dtype == np.uint8
            np.testing.assert_array_equal(s[f"patch{k}.npy"], maxpool(mask, k), err_msg=f"{key} patch{k}")
        assert abs(s["meta.json"]["foreground"] - (mask > 0).mean()) < 1e-5
        if "fov.png" in s:
            assert set(np.unique(s["fov.png"])) <= {0, 255}
        if "inst.png" in s:
            assert s["inst.png"].dtype == np.uint16
            np.testing.assert_array_equal(s["inst.png"] > 0, mask > 0)
        foreground += s["meta.json"]["foreground"]
    assert foreground > 0, "every mask is empty: a binarisation bug"


def test_modality_id_from_the_table(built):
    _, conv, out, _ = built
    mid = modality_id(conv.modality)
    for s in read_built(out).values():
        meta = s["meta.json"]
        assert META_FIELDS <= set(meta) and all(len(h) == 64 for h in meta["sha256"].values())
        assert s["modality.cls"] == str(mid)
        assert (meta["dataset"], meta["modality"], meta["modality_id"]) == (conv.name, conv.modality, mid)


def test_missing_layout_names_where_it_looked(built, tmp_path):
    cls = built[0]
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "readme.txt").write_text("x")
    with pytest.raises(LayoutError) as e:
        build(cls.name, tmp_path, tmp_path / "out", size=SIZE, **cls.fake_options)
    assert str(tmp_path) in str(e.value) and "wrong/" in str(e.value)


def test_domains_are_registry_queries():
    source, unseen = registered("source"), registered("unseen")
    assert {"isic2018", "montgomery", "shenzhen", "drive", "cvc-clinicdb", "udiat", "dsb2018"} == set(source)
    assert not set(source) & set(unseen) and {"ph2", "stare", "busi", "monuseg"} <= set(unseen)
    with pytest.raises(ValueError, match="expected one of source, unseen"):
        registered("seen")


def test_a_converter_without_fake_data_fails_the_battery(tmp_path):
    @register
    class NoFake(Converter):
        name = "no-fake"
        title = "a converter registered without fake data"
        modality = "ct"
        layout = marker = "*.png"

    try:
        with pytest.raises(AssertionError, match=r"no-fake \(.*NoFake\)"):
            battery()
        with pytest.raises(ValueError, match="no fake-data maker"):
            make_fake("no-fake", tmp_path)
    finally:
        del REGISTRY["no-fake"]
    assert "no-fake" not in battery()


def test_a_public_dataset_without_its_source_fails_the_battery():
    @register
    class Unsourced(Converter):
        name = "unsourced"
        title = "a public dataset registered without its official page, licence and citation"
        modality = "ct"
        layout = marker = "*.png"
        domain = "unseen"
        fake = staticmethod(lambda root, seed=0: root)
        fake_counts = {"test": 1}
        homepage = "https://example.org/"

    try:
        with pytest.raises(AssertionError, match=r"unsourced \(.*Unsourced: license, citation\)"):
            battery()
    finally:
        del REGISTRY["unsourced"]


def test_options_are_validated_by_their_declaration():
    assert get_converter("stare", annotator="vk").opts.annotator == "vk"
    assert get_converter("volumes", modality="ct", channel="2", dicom="true").opts.channel == 2
    with pytest.raises(ValueError, match=r"--dataset drive does not take images \(options: none\)"):
        get_converter("drive", images="*.png")
    with pytest.raises(ValueError, match=r"--dataset chase-db1 does not take x \(options: annotator\)"):
        get_converter("chase-db1", x=1)
    with pytest.raises(ValueError, match="-o channel: expected int, got 'abc'"):
        get_converter("volumes", modality="ct", channel="abc")
    with pytest.raises(ValueError, match=r"-o channel: expected int >= 0, got -1"):
        get_converter("volumes", modality="ct", channel=-1)
    with pytest.raises(ValueError, match="-o annotator: expected one of ah, vk, got 'xx'"):
        get_converter("stare", annotator="xx")
    with pytest.raises(ValueError, match="-o dicom: expected true or false, got 'maybe'"):
        get_converter("volumes", modality="ct", dicom="maybe")
    with pytest.raises(ValueError, match="-o label_windows: expected a JSON object"):
        get_converter("volumes", modality="ct", multilabel="each", label_windows="bone")

