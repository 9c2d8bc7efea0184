"""The rolling tar writer (``manifests.tar.ShardWriter``): its byte and sample limits, the part records it returns, and
that an error leaves finished parts only."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from medprep.manifests.tar import OversizedSample, ShardWriter, TarPart, TarShard, stream_samples

PART = 20_480  # two tar records


def sample(i: int, size: int = 1000) -> dict:
    return {"__key__": f"s{i:03d}", "data.bin": bytes([i % 251]) * size, "modality.cls": b"1"}


def read_back(folder: Path, parts: tuple[TarPart, ...]) -> list[list[str]]:
    """The keys of every part, read through the shard reader; checks each record against its file."""
    keys = []
    for pt in parts:
        data = (folder / pt.file).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (pt.bytes, pt.sha256)
        with open(folder / pt.file, "rb") as f:
            keys.append([s["__key__"] for s in stream_samples(f, pt.file, expected=pt.nsamples)])
    return keys


def single_tar(path: Path, samples: list[dict]) -> bytes:
    w = TarShard(path)
    for s in samples:
        w.write(s)
    w.close()
    return path.read_bytes()


def test_parts_roll_over_at_the_byte_limit_and_are_filled_greedily(tmp_path):
    samples = [sample(i, 700 + 97 * i) for i in range(30)]
    with ShardWriter(tmp_path, "train-000000", PART) as w:
        numbers = [w.write(s) for s in samples]
    parts = w.close()
    assert len(parts) > 2 and [pt.file for pt in parts] == [f"train-000000.part{i:02d}.tar" for i in range(len(parts))]
    keys = read_back(tmp_path, parts)
    assert [k for part in keys for k in part] == [s["__key__"] for s in samples]  # every sample once, in order
    assert numbers == [i for i, part in enumerate(keys) for _ in part]  # write() names the part a sample went into
    start = 0
    for i, pt in enumerate(parts):
        mine = samples[start: start + pt.nsamples]
        assert pt.bytes <= PART
        # the same bytes as one TarShard of those samples, and the next sample would not have fitted
        assert (tmp_path / pt.file).read_bytes() == single_tar(tmp_path / "one.tar", mine)
        if i + 1 < len(parts):
            assert len(single_tar(tmp_path / "more.tar", mine + [samples[start + pt.nsamples]])) > PART
        start += pt.nsamples


def test_parts_roll_over_at_the_sample_limit(tmp_path):
    with ShardWriter(tmp_path, "t", 10**9, max_samples=4) as w:
        for i in range(10):
            w.write(sample(i))
    assert [pt.nsamples for pt in w.parts] == [4, 4, 2]
    assert read_back(tmp_path, tuple(w.parts))[2] == ["s008", "s009"]


def test_the_first_limit_reached_closes_a_part(tmp_path):
    big, small = sample(0, 8000), [sample(i, 10) for i in range(1, 8)]
    with ShardWriter(tmp_path, "t", PART, max_samples=3) as w:
        for s in [big, big | {"__key__": "s100"}, *small]:
            w.write(s)
    # two 8 KB samples fill a 20 KB part (a third would not fit); then 3 small ones per part
    assert [pt.nsamples for pt in w.parts] == [2, 3, 3, 1]


def test_a_sample_larger_than_a_part_is_refused_and_the_open_part_goes_on(tmp_path):
    with ShardWriter(tmp_path, "t", PART) as w:
        w.write(sample(0))
        with pytest.raises(OversizedSample, match=r"sample s001 takes 30720 bytes in a tar, more than a part's "
                                                  r"limit of 20480 bytes") as err:
            w.write(sample(1, 25_000))
        assert (err.value.key, err.value.nbytes, err.value.limit) == ("s001", 30_720, PART)
        assert w.write(sample(2)) == 0
    assert [pt.nsamples for pt in w.parts] == [2]
    assert read_back(tmp_path, tuple(w.parts)) == [["s000", "s002"]]


def test_an_error_leaves_finished_parts_only(tmp_path):
    posted = []
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(tmp_path, "t", 10**9, max_samples=3, post=posted.append) as w:
            for i in range(5):
                w.write(sample(i))
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.part00.tar"]  # the unfinished t.part01.tar is gone
    assert posted == [tmp_path / "t.part00.tar"] and [pt.nsamples for pt in w.parts] == [3]
    assert read_back(tmp_path, tuple(w.parts)) == [["s000", "s001", "s002"]]


def test_each_finished_part_is_posted_before_it_is_recorded(tmp_path):
    """``post`` gets every part once it is closed (here: moved away, as a task uploads it); the records name them."""
    store = tmp_path / "store"
    store.mkdir()
    seen: list[tuple[str, int]] = []

    def upload(part: Path) -> None:
        seen.append((part.name, len(w.parts)))  # not recorded yet
        shutil.move(part, store / part.name)

    work = tmp_path / "work"
    work.mkdir()
    w = ShardWriter(work, "valid-000003", 10**9, max_samples=2, post=upload)
    for i in range(5):
        w.write(sample(i))
    parts = w.close()
    assert seen == [(f"valid-000003.part{i:02d}.tar", i) for i in range(3)]
    assert list(work.iterdir()) == [] and [pt.nsamples for pt in parts] == [2, 2, 1]
    assert [k for part in read_back(store, parts) for k in part] == [f"s{i:03d}" for i in range(5)]


def test_part_records_round_trip_through_json():
    pt = TarPart("train-000000.part00.tar", 3, 20_480, "0" * 64)
    assert pt.to_json() == {"file": pt.file, "nsamples": 3, "bytes": 20_480, "sha256": "0" * 64}
    assert TarPart.from_json(pt.to_json()) == pt


@pytest.mark.parametrize("limits", [(0, None), (PART, 0)])
def test_limits_must_allow_a_sample(tmp_path, limits):
    with pytest.raises(ValueError, match="a part holds at least one sample"):
        ShardWriter(tmp_path, "t", *limits)
