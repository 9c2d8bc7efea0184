"""The shard reader's per-sample shortcuts keep every check: shard tar headers parse exactly as ``tarfile`` parses
them (a fast path for the headers medprep writes, ``tarfile``'s own parser for anything else), offset indexes read
once per process stay checked on every ranged read, and a partition without a shuffle buffer needs no generator."""

from __future__ import annotations

import shutil
import tarfile

import pytest

from medprep.loaders import MedShards
from medprep.loaders.partition import resumable
from medprep.loaders.shards import _Reader
from medprep.manifests import BuiltDataset, ShardError, open_dataset, tar_bytes
from medprep.manifests.tar import _NUMBERS, _ShardTarInfo, _byte_sum

ATTRS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname", "uname", "gname", "devmajor",
         "devminor")


def _parsed(cls: type[tarfile.TarInfo], block: bytes) -> tuple | type:
    try:
        info = cls.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        return type(e)
    return tuple(getattr(info, a) for a in ATTRS)


def _other_tars() -> list[bytes]:
    """Tars whose headers are not all of the fast kind: a PAX long name, GNU and v7 formats, a folder, a ustar name
    prefix, a damaged checksum, a signed checksum, a size in base-256, a cut header."""
    out = [tar_bytes({"k" * 120 + ".image.png": b"x" * 700, "a.b": b""})]
    for fmt in (tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        info = tarfile.TarInfo("d" * 120 + "/k.mask.png" if fmt == tarfile.USTAR_FORMAT else "k" * 120 + ".x")
        info.size = 3
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        out += [info.tobuf(fmt, "utf-8", "surrogateescape") + b"abc".ljust(512, b"\0"),
                folder.tobuf(fmt, "utf-8", "surrogateescape")]
    block = bytearray(tar_bytes({"k.image.png": b"x"})[:512])
    damaged = bytes(block[:148]) + b"000001\0 " + bytes(block[156:])
    high = bytearray(block)
    high[265:270] = "\xe9t\xe9".encode("latin-1").ljust(5, b"\0")  # bytes over 127 in uname
    signed = 256 + sum(b if b < 128 else b - 256 for b in high[:148] + high[156:])
    high[148:156] = b"%06o\0 " % signed
    big = bytearray(block)
    big[124:136] = b"\x80" + (700).to_bytes(11, "big")
    return out + [damaged, bytes(high), bytes(big), bytes(block[:300]), b"\0" * 512]


def test_shard_headers_parse_exactly_as_tarfile_parses_them(tiny_drive):
    shards = sorted(tiny_drive.glob("*.tar"))
    blobs = [p.read_bytes() for p in shards]
    for blob in blobs + _other_tars():
        for at in range(0, len(blob), 512):
            block = blob[at:at + 512]
            assert _parsed(_ShardTarInfo, block) == _parsed(tarfile.TarInfo, block), (at, block[:100])
            assert len(block) < 512 or _byte_sum(block) == sum(block)
    fast = sum(_NUMBERS.fullmatch(blob, at + 100, at + 157) is not None for blob in blobs
               for at in range(0, len(blob), 512))
    members = 0
    for p in shards:
        with tarfile.open(p) as tf:
            members += len(tf.getmembers())
    assert fast == members > 0  # every header medprep wrote takes the fast path


def test_indexes_are_read_once_per_process_and_every_read_stays_checked(tiny_drive, tmp_path, monkeypatch):
    root = shutil.copytree(tiny_drive, tmp_path / "drive")
    reads: list[str] = []
    index_shard = BuiltDataset.index_shard
    monkeypatch.setattr(BuiltDataset, "index_shard",
                        lambda self, shard: reads.append(shard.name) or index_shard(self, shard))
    loader = MedShards(root, fields=["key", "image"], shuffle=False)  # 256 partitions: every sample by ranged read
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        epochs.append([(s["key"], s["image"].sum().item()) for s in loader])
    assert epochs[0] == epochs[1] == [(s["key"], s["image"].sum().item())
                                       for s in MedShards(root, fields=["key", "image"], shuffle=False)]
    shards = {e.name for e in open_dataset(root).manifest.shards_of("train")}
    assert sorted(reads) == sorted(shards) * 2  # once for the loader's two epochs, once for the fresh loader

    monkeypatch.setattr(_Reader, "INDEXES", 0)  # none kept: every ranged read reads its index again
    reads.clear()
    list(MedShards(root, fields=["key", "image"], shuffle=False))
    assert len(reads) == len(epochs[0])

    monkeypatch.setattr(_Reader, "INDEXES", 64)
    for name in shards:  # cut short after its index was read: the next ranged read says so
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[:len(data) // 2])
    with pytest.raises(ShardError, match=rf"shard train-\d+\.tar of {root}: sample \S+: member .* cut short"):
        list(loader)


def test_a_shuffle_buffer_needs_a_generator():
    runs = [("run", 3)]
    read = lambda run, k: iter(range(k, run[1]))  # noqa: E731
    fetch = lambda run, k: k  # noqa: E731
    assert list(resumable(runs, lambda run: run[1], read, fetch, 1, None)) == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(ValueError, match="a shuffle buffer of 4 items needs a generator"):
        list(resumable(runs, lambda run: run[1], read, fetch, 4, None))
