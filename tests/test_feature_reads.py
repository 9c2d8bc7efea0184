"""Fast feature reads (issue 20): whole chunks straight from local chunk files agree with zarr for every dtype and
codec, the stored dtype and batches, the integrity checks on that path, remote stores through zarr, --codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from medprep.cli import app
from medprep.distill import CacheExecution, FeatureStore
from medprep.loaders import collate, pinned_collate
from medprep.loaders.teacher import TeacherFeatures, dequantise
from medprep.manifests.chunks import ChunkFiles
from medprep.manifests.features import CODECS, DamagedStore, FeatureReader

CPU = CacheExecution("cpu")

pytestmark = pytest.mark.usefixtures("collect_clients")  # object-store clients (conftest)

DTYPES = ("float16", "bfloat16", "int8", "float32")
SHAPE = (8, 4, 4)
N, SHARD = 6, 4


def _write(url: str, dtype: str, codec: str | None, views: tuple[str, ...] = ("identity",)) -> torch.Tensor:
    """A run ``r`` of N samples (the last zarr shard partial, padding rows of sample 1 zeroed) through the writer."""
    attrs = {"dtype": dtype, "views": list(views), "shard_samples": SHARD, "encoder": "x",
             **({"codec": codec} if codec else {})}
    store = FeatureStore.create_or_open(url, "r", [f"k{i}" for i in range(N)], attrs, lambda: SHAPE)
    x = torch.randn(N, *SHAPE, generator=torch.Generator().manual_seed(0)) * 3
    valid = np.full((N, 2), 4, np.int32)
    valid[1] = (2, 4)
    for s in range(store.nshards):
        sl = store.shard_slice(s)
        store.write_shard(s, {v: x[sl].flip(-1) if v == "hflip" else x[sl] for v in views}, valid[sl],
                          np.stack([0 * valid[sl, 1], valid[sl, 1]], 1) if "hflip" in views else None)
    return x


def _by_zarr(url: str, view: str = "identity") -> np.ndarray:
    """Every sample decoded through zarr (FeatureReader.read: the path that existed before)."""
    return FeatureReader.open(url, "r").read(slice(None), view)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_files_read_what_zarr_reads(tmp_path, dtype, codec):
    url = str(tmp_path / "s.zarr")
    _write(url, dtype, codec, views=("identity", "hflip"))
    feats = TeacherFeatures(url, "r")
    reader = feats.readers[0]
    assert isinstance(reader._chunk_files("identity")[0], ChunkFiles)  # the fast path is the one tested
    assert reader.attrs["codec"] == codec
    for view in ("identity", "hflip"):
        want = _by_zarr(url, view)
        got = np.stack([feats.get(k, view) for k in feats.keys()])
        assert got.dtype == np.float32 and np.array_equal(got, want)
        batch = feats.get_batch(feats.keys()[::-1], view)["teacher"]  # across zarr shards, any order
        assert np.array_equal(batch.numpy(), want[::-1])
        assert np.array_equal(np.stack([reader.valid_mask(i, view) for i in range(N)]),
                              np.stack([feats.valid_mask(k, view) for k in feats.keys()]))
    stored = feats.get_batch(feats.keys(), dtype="stored")
    assert stored["teacher"].dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
                                       "float32": torch.float32}[dtype]
    assert ("teacher_scale" in stored) == (dtype == "int8")
    assert np.array_equal(dequantise(stored["teacher"], stored.get("teacher_scale")).numpy(), _by_zarr(url))
    one = feats.get("k5", dtype="stored")
    assert isinstance(one, torch.Tensor) and torch.equal(one, stored["teacher"][5])
    if dtype == "int8":
        assert torch.equal(feats.scale("k5"), stored["teacher_scale"][5])
    else:
        with pytest.raises(ValueError, match="only int8"):
            feats.scale("k5")


def test_readers_pickle_after_fast_reads(tmp_path):
    """A reader that has mapped chunk files still pickles (dask workers, DataLoader spawn) and reads the same."""
    import pickle

    url = str(tmp_path / "s.zarr")
    _write(url, "int8", None)
    reader = FeatureReader.open(url, "r")
    first = reader.stored([1, 5])
    again = pickle.loads(pickle.dumps(reader)).stored([1, 5])
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))


def test_existing_zstd_store_is_read_and_resumed(tmp_path):
    """A run written before --codec existed (zstd, no codec attr) reads on the fast path, and resumes."""
    url = str(tmp_path / "s.zarr")
    _write(url, "float16", "zstd-1")
    group = zarr.open_group(url, mode="r+")["r"]
    del group.attrs["codec"]
    feats = TeacherFeatures(url, "r")
    assert np.array_equal(np.stack([feats.get(k) for k in feats.keys()]), _by_zarr(url))
    attrs = {"dtype": "float16", "views": ["identity"], "shard_samples": SHARD, "encoder": "x"}
    FeatureStore.create_or_open(url, "r", [f"k{i}" for i in range(N)], attrs, lambda: SHAPE)  # no refusal


def test_unknown_codec_is_refused(tmp_path):
    from medprep.distill import CacheParams

    with pytest.raises(ValueError, match=r"unknown --codec 'lz5': expected one of \('blosc-lz4'"):
        CacheParams("random-sam", str(tmp_path), str(tmp_path / "t.zarr"), codec="lz5")
    res = CliRunner().invoke(app, ["cache-teacher", "--source", str(tmp_path), "--out", str(tmp_path / "t.zarr"),
                                   "--encoder", "random-sam", "--codec", "lz5", "--device", "cpu"])
    assert res.exit_code != 0 and "--codec 'lz5'" in res.output


def _chunk_extent(shard: Path, j: int) -> tuple[int, int]:
    raw = shard.read_bytes()
    offset, size = np.frombuffer(raw, "<u8", count=2, offset=len(raw) - 16 * SHARD - 4 + 16 * j)
    return int(offset), int(size)


@pytest.mark.parametrize("codec", ["none", "blosc-lz4"])
def test_damage_on_the_fast_path_names_the_key(tmp_path, codec):
    url = str(tmp_path / "s.zarr")
    _write(url, "float16", codec)
    shard = Path(url) / "r" / "features" / "c" / "0" / "0" / "0" / "0"
    offset, size = _chunk_extent(shard, 2)
    raw = bytearray(shard.read_bytes())
    raw[offset + size // 2] ^= 0x01  # one flipped bit inside sample 2's chunk
    shard.write_bytes(bytes(raw))
    feats = TeacherFeatures(url, "r")
    with pytest.raises(DamagedStore, match=r"sample 'k2' \(row 2\) of teacher store .*run 'r'.*cannot be read"):
        feats.get("k2")
    with pytest.raises(DamagedStore, match="sample 'k2'"):
        feats.get_batch(["k0", "k2"])
    assert np.array_equal(feats.get("k3"), FeatureReader.open(url, "r").read(3))  # the shard's other samples read
    raw[-2] ^= 0x01  # the shard index's own checksum
    shard.write_bytes(bytes(raw))
    with pytest.raises(DamagedStore, match=r"sample 'k1' .*run 'r'.*(checksum|cannot be read)"):
        feats.get("k1")  # a chunk not read before: its shard object is mapped again and its index checked
    with pytest.raises(DamagedStore, match=r"sample 'k0' .*run 'r'.*(checksum|cannot be read)"):
        TeacherFeatures(url, "r").get("k0")


@pytest.mark.parametrize("change", [-8, -1, 4, 40])
def test_a_shard_index_that_lies_about_a_chunk_size_is_damage(tmp_path, change):
    """A hostile shard index (its own crc32c recomputed) gives sample 2's uncompressed chunk a size other than one
    sample's values and their crc32c: the read names the sample; nothing is read or written out of bounds."""
    import google_crc32c

    url = str(tmp_path / "s.zarr")
    _write(url, "float16", "none")
    shard = Path(url) / "r" / "features" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    at = len(raw) - 16 * SHARD - 4 + 16 * 2 + 8
    raw[at:at + 8] = (int(np.frombuffer(raw, "<u8", 1, at)[0]) + change).to_bytes(8, "little")
    index = bytes(raw[len(raw) - 16 * SHARD - 4:-4])
    raw[-4:] = google_crc32c.value(index).to_bytes(4, "little")
    shard.write_bytes(bytes(raw))
    feats = TeacherFeatures(url, "r")
    with pytest.raises(DamagedStore, match=r"sample 'k2' .*run 'r'.*cannot be read"):
        feats.get("k2")
    assert feats.get("k1").shape == SHAPE


@pytest.mark.parametrize("codec", ["none", "blosc-lz4"])
def test_a_run_chunked_otherwise_reads_the_same(tmp_path, codec):
    """Another writer's chunking (two samples a feature chunk; scales split across channels): reads give the same
    features (through zarr where a chunk does not hold whole rows)."""
    from medprep.manifests.features import compressors

    url = str(tmp_path / "s.zarr")
    _write(url, "int8", codec)
    want = TeacherFeatures(url, "r")
    want = {k: (want.get(k), want.get(k, dtype="stored"), want.scale(k)) for k in want.keys()}
    group = zarr.open_group(url, mode="r+")["r"]
    for name, chunks in (("features", (2, *SHAPE)), ("scale", (4, SHAPE[0] // 2))):
        old = group[name]
        values, attrs = old[:], dict(old.attrs)
        new = group.create_array(name, shape=old.shape, dtype=old.dtype, fill_value=old.fill_value, chunks=chunks,
                                 compressors=compressors(codec), attributes=attrs, overwrite=True)
        new[:] = values
    feats = TeacherFeatures(url, "r")
    for k, (x, stored, scale) in want.items():
        assert np.array_equal(feats.get(k), x) and torch.equal(feats.get(k, dtype="stored"), stored)
        assert torch.equal(feats.scale(k), scale)


def test_missing_chunks_on_the_fast_path(tmp_path):
    url = str(tmp_path / "s.zarr")
    _write(url, "int8", "none")
    features = Path(url) / "r" / "features" / "c"
    (features / "1" / "0" / "0" / "0").unlink()  # the zarr shard of samples 4-5
    feats = TeacherFeatures(url, "r")
    assert feats.get("k3").shape == SHAPE
    with pytest.raises(DamagedStore, match=r"sample 'k4' .*run 'r'.*marked done but its chunk is missing"):
        feats.get("k4")
    (Path(url) / "r" / "scale" / "c" / "0" / "0").unlink()  # the scales of samples 0-3
    feats = TeacherFeatures(url, "r")  # (the reader above found that chunk already: it still reads its mapping)
    for dtype in ("float32", "stored"):
        with pytest.raises(DamagedStore, match=r"sample 'k1' .*marked done but its chunk is missing"):
            feats.get("k1", dtype=dtype)


def test_a_chunk_absent_from_its_shard_index(tmp_path):
    """A shard object whose index marks one inner chunk as never written (2**64 - 1 twice): the sample is missing."""
    url = str(tmp_path / "s.zarr")
    _write(url, "float16", "none")
    array = zarr.open_group(url, mode="r+")["r"]["features"]
    shard = Path(url) / "r" / "features" / "c" / "0" / "0" / "0" / "0"
    keep = array[:4].copy()
    keep[1] = np.nan  # zarr writes no chunk that is all fill value
    array[:4] = keep
    assert _chunk_extent(shard, 1) == (2**64 - 1, 2**64 - 1)
    with pytest.raises(DamagedStore, match=r"sample 'k1' .*marked done but its chunk is missing"):
        TeacherFeatures(url, "r").get("k1")


@pytest.mark.parametrize("codec", ["none", "blosc-lz4"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_nan_and_inf_on_the_fast_path(tmp_path, dtype, codec):
    url = str(tmp_path / "s.zarr")
    _write(url, dtype, codec)
    array = zarr.open_group(url, mode="r+")["r"]["features"]
    values = array[5]
    values[3, 1, 2] = 0x7F80 if dtype == "bfloat16" else np.inf
    array[5] = values  # through zarr: the checksum matches, the values are bad
    feats = TeacherFeatures(url, "r")
    for read in (lambda: feats.get("k5"), lambda: feats.get("k5", dtype="stored"),
                 lambda: feats.get_batch(["k4", "k5"])):
        with pytest.raises(DamagedStore, match=r"sample 'k5' .*run 'r'.*NaN or Inf"):
            read()


def test_damaged_int8_scales_name_the_sample(tmp_path):
    """An uncompressed int8 run: a flipped byte in the scales of samples 0-3 fails every read of those samples."""
    url = str(tmp_path / "s.zarr")
    _write(url, "int8", "none")
    chunk = Path(url) / "r" / "scale" / "c" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0x10
    chunk.write_bytes(bytes(raw))
    feats = TeacherFeatures(url, "r")
    for read in (lambda: feats.get("k1"), lambda: feats.get("k1", dtype="stored"),
                 lambda: feats.get_batch(["k5", "k1"])):
        with pytest.raises(DamagedStore, match=r"sample 'k1' .*run 'r'.*(checksum)"):
            read()
    assert feats.get("k5").shape == SHAPE  # the other zarr shard's scales are sound


def _chunk(values: np.ndarray) -> np.ndarray:
    """A zarr chunk of ``values`` as the codec none writes it: their little-endian bytes, then their crc32c."""
    import google_crc32c

    raw = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    return np.concatenate([raw, np.frombuffer(google_crc32c.value(raw.tobytes()).to_bytes(4, "little"), np.uint8)])


@pytest.mark.parametrize("two_pass", [False, True], ids=["one-pass", "two-pass"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_chunk_checks_and_converts_chunks_of_any_size_and_alignment(dtype, two_pass, monkeypatch):
    """decode_chunk equals decode (float32) and a copy (stored dtype) for sizes that leave any tail beside the three
    crc streams, chunks at any byte offset and int8 channels the streams can or cannot step through; it reports a
    flipped bit, a NaN/Inf anywhere (start, a stream's first value, the tail) or in the sample's own scale row, and a
    chunk of the wrong size. two-pass: CPUs without the crc32 instruction."""
    from medprep.manifests import kernels
    from medprep.manifests.features import decode

    monkeypatch.setattr(kernels, "HARDWARE_CRC", kernels.HARDWARE_CRC and not two_pass)
    rng = np.random.default_rng(0)
    shapes = [(1, 1, 1), (3, 5, 7), (4, 8, 8), (8, 16, 16), (7, 13, 17)] + ([] if two_pass else [(256, 64, 64)])
    for shape in shapes:
        c = shape[0]
        if dtype == "int8":
            values = rng.integers(-127, 128, shape).astype(np.int8)
            scales = (rng.random((3, c)) + 0.1).astype(np.float16)  # the sample is row 1 of its zarr shard's scales
            scale_chunk = _chunk(scales)
        else:
            values = (rng.standard_normal(shape) * 3).astype(np.float32)
            values = (values.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bfloat16" else values.astype(dtype)
            scales, scale_chunk = None, None
        want = decode(values, None if scales is None else scales[1], dtype)
        for offset in (0, 1, 4):  # inside a shard file a chunk is only 4-byte aligned
            buffer = np.zeros(_chunk(values).size + offset, np.uint8)
            buffer[offset:] = _chunk(values)
            chunk = buffer[offset:]
            out = np.full(shape, np.nan, np.float32)
            assert kernels.decode_chunk(chunk, dtype, out, scale_chunk, 1) == kernels.SOUND, (shape, offset)
            np.testing.assert_array_equal(out, want)
            copied = np.zeros_like(values)
            assert kernels.decode_chunk(chunk, dtype, copied) == kernels.SOUND
            np.testing.assert_array_equal(copied, values)
            damaged = chunk.copy()
            damaged[rng.integers(0, damaged.size)] ^= np.uint8(1 << int(rng.integers(0, 8)))
            assert kernels.decode_chunk(damaged, dtype, out, scale_chunk, 1) == kernels.CHECKSUM
        assert kernels.decode_chunk(chunk[:-1], dtype, out, scale_chunk, 1) == kernels.SIZE
        if dtype == "int8":
            assert kernels.decode_chunk(chunk, dtype, out) == kernels.SIZE  # float32 output needs the scales
            assert kernels.decode_chunk(chunk, dtype, out, scale_chunk, 3) == kernels.SIZE
            for row, want_status in ((1, kernels.NONFINITE), (2, kernels.SOUND)):
                bad = scales.copy()
                bad[row, c // 2] = np.nan
                assert kernels.decode_chunk(chunk, dtype, out, _chunk(bad), 1) == want_status
            damaged = scale_chunk.copy()
            damaged[0] ^= 1
            assert kernels.decode_chunk(chunk, dtype, out, damaged, 1) == kernels.CHECKSUM
            row = np.zeros(c, np.float16)  # the stored dtype's scale: copy_scale
            assert kernels.copy_scale(scale_chunk, 1, row) == kernels.SOUND and np.array_equal(row, scales[1])
            assert kernels.copy_scale(damaged, 1, row) == kernels.CHECKSUM
            assert kernels.copy_scale(_chunk(bad), 1, row) == kernels.SOUND  # row 2's NaN is not this sample's
            assert kernels.copy_scale(_chunk(bad), 2, row) == kernels.NONFINITE
            assert kernels.copy_scale(scale_chunk, 3, row) == kernels.SIZE
            continue
        n = values.size
        nonfinite = {"float16": [0x7C00, 0xFC00, 0x7E01], "bfloat16": [0x7F80, 0xFF80, 0x7FC1],
                     "float32": [0x7F800000, 0xFF800000, 0x7FC00001]}[dtype]
        bits = np.uint32 if dtype == "float32" else np.uint16
        for k, at in enumerate(sorted({0, n // 3, n // 2, n - 1})):
            bad = values.copy()
            bad.reshape(-1).view(bits)[at] = nonfinite[k % 3]
            assert kernels.decode_chunk(_chunk(bad), dtype, out) == kernels.NONFINITE, (shape, at)
            assert kernels.decode_chunk(_chunk(bad), dtype, np.zeros_like(values)) == kernels.NONFINITE, (shape, at)


NO_F16C = """
import numpy as np
import google_crc32c
from medprep.manifests import kernels
assert kernels.HARDWARE_CRC and not kernels.HARDWARE_HALF, (kernels.HARDWARE_CRC, kernels.HARDWARE_HALF)
bits = np.arange(2**16, dtype=np.uint16)
want = bits.view(np.float16).astype(np.float32)
finite = np.isfinite(want)
out = np.empty(bits.size, np.float32)
assert kernels.widen_float16(bits, out)  # NaN/Inf flagged
assert np.array_equal(out[finite], want[finite]) and np.array_equal(np.isinf(out), np.isinf(want))
assert np.isnan(out[np.isnan(want)]).all()
values = bits[finite].view(np.float16).reshape(2, -1)  # every finite value, in 2 channels
raw = values.view(np.uint8).reshape(-1)
chunk = np.concatenate([raw, np.frombuffer(google_crc32c.value(raw.tobytes()).to_bytes(4, "little"), np.uint8)])
out = np.empty(values.shape, np.float32)
assert kernels.decode_chunk(chunk, "float16", out) == kernels.SOUND
assert np.array_equal(out, values.astype(np.float32))
print("exact")
"""



def test_float16_without_f16c_is_exact(tmp_path):
    """numba compiling for an x86 CPU without F16C (any without AVX): float16 converts exactly, in integers. (LLVM
    would call a library function numba's JIT lacks: "Symbol not found: __extendhfsf2", an abort.) Every bit
    pattern, through the per-value and the one-pass kernels, in a process whose numba targets such a CPU."""
    import os
    import subprocess
    import sys

    from medprep.manifests import kernels

    if not kernels._X86:
        pytest.skip("an x86 question: other CPUs convert float16 in hardware")
    env = {**os.environ, "NUMBA_CPU_NAME": "x86-64", "NUMBA_CACHE_DIR": str(tmp_path),
           "NUMBA_CPU_FEATURES": "+64bit,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+crc32,+popcnt,-avx,-avx2,-f16c"}
    res = subprocess.run([sys.executable, "-c", NO_F16C], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "exact" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_finite_features_whose_sum_overflows_are_sound(tmp_path, dtype):
    url = str(tmp_path / "s.zarr")
    store = FeatureStore.create_or_open(url, "r", ["a"], {"dtype": dtype, "views": ["identity"], "shard_samples": 1,
                                                          "encoder": "x"}, lambda: SHAPE)
    store.write_shard(0, {"identity": torch.full((1, *SHAPE), 3e38)}, np.full((1, 2), 4, np.int32))
    x = torch.from_numpy(TeacherFeatures(url, "r").get("a"))
    assert torch.isinf(x.sum()) and torch.isfinite(x).all()


def test_remote_store_reads_through_zarr(tmp_path, monkeypatch):
    """An s3:// store (moto's S3 server on loopback) reads the same features, through zarr."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        import fsspec

        host, port = server.get_host_and_port()
        for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{host}:{port}",
                                                       "skip_instance_cache": True})

        url = str(tmp_path / "s.zarr")
        _write(url, "int8", None)
        fs = fsspec.filesystem("s3")
        fs.mkdir("feats")
        fs.put(url, "feats/s.zarr", recursive=True)
        local, remote = TeacherFeatures(url, "r"), TeacherFeatures("s3://feats/s.zarr", "r")
        assert remote.readers[0]._chunk_files("identity") is None  # zarr's path
        for key in local.keys():
            assert np.array_equal(remote.get(key), local.get(key))
            assert torch.equal(remote.get(key, dtype="stored"), local.get(key, dtype="stored"))
        assert torch.equal(remote.get_batch(["k1", "k4"])["teacher"], local.get_batch(["k1", "k4"])["teacher"])
    finally:
        server.stop()


def test_pinned_collate_batches_like_collate():
    batch = [{"teacher": torch.full(SHAPE, float(i)), "key": f"k{i}"} for i in range(3)]
    pinned, plain = pinned_collate(batch), collate(batch)
    assert torch.equal(pinned["teacher"], plain["teacher"]) and pinned["key"] == plain["key"]
    assert pinned["teacher"].is_pinned() == torch.cuda.is_available()


def test_codec_is_recorded_and_kept_on_resume(tmp_path):
    from PIL import Image

    from medprep.distill import CacheParams, cache_teacher
    from medprep.distill.synthetic import natural_image

    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.fromarray(natural_image(48, 64, np.random.default_rng(i))).save(tmp_path / "imgs" / f"im{i}.png")

    def run(codec: str | None) -> None:
        cache_teacher(CacheParams("random-sam", tmp_path / "imgs", tmp_path / "t.zarr", "r", codec=codec,
                                  encoder_kwargs={"img_size": 64}, shard_samples=1, batch_size=1), execution=CPU)

    run("zstd-1")
    group = zarr.open_group(tmp_path / "t.zarr", mode="r")["r"]
    inner = group["features"].metadata.to_dict()["codecs"][0]["configuration"]["codecs"]
    assert group.attrs["codec"] == "zstd-1" and [c["name"] for c in inner] == ["bytes", "zstd", "crc32c"]
    run(None)  # a rerun keeps the run's codec
    with pytest.raises(ValueError, match=r"cached with other parameters \(codec: store has 'zstd-1', this run 'none'"):
        run("none")
    feats = TeacherFeatures(str(tmp_path / "t.zarr"), "r")
    assert np.array_equal(np.stack([feats.get(k) for k in feats.keys()]), _by_zarr(str(tmp_path / "t.zarr")))


def test_threads_share_one_reader(tmp_path, monkeypatch):
    """Threads reading through one TeacherFeatures (more shard objects than stay mapped) get the right samples."""
    from concurrent.futures import ThreadPoolExecutor

    import medprep.manifests.chunks as chunks

    url = str(tmp_path / "s.zarr")
    _write(url, "float16", None)
    feats = TeacherFeatures(url, "r")
    want = {k: feats.get(k) for k in feats.keys()}
    monkeypatch.setattr(chunks, "MAPPED", 1)  # every other read maps its shard again
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda k: (k, feats.get(k)), [k for _ in range(20) for k in feats.keys()]))
    assert all(np.array_equal(x, want[k]) for k, x in got)


def test_crc32c_kernel_equals_google_crc32c_for_any_length_and_alignment():
    import google_crc32c

    from medprep.manifests.kernels import crc32c

    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)
    for n in (0, 1, 7, 8, 23, 24, 25, 47, 48, 1001, 4999):
        for start in (0, 1, 3):
            assert crc32c(data[start:start + n]) == google_crc32c.value(data[start:start + n].tobytes()), (n, start)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_pass_kernels_decode_exactly_and_flag_every_non_finite_value(dtype):
    """Every finite float16 / bfloat16 bit pattern converts as numpy does; any NaN/Inf (or int8 NaN scale) is
    flagged, in the float32 and the stored output."""
    from medprep.manifests.features import decode
    from medprep.manifests.kernels import convert

    bits = np.arange(2**16, dtype=np.uint16)
    if dtype == "int8":
        values, scale = np.arange(-127, 128, dtype=np.int8).reshape(5, 3, 17), np.linspace(0.1, 2, 5).astype(np.float16)
    else:
        values = bits.view(np.float16) if dtype == "float16" else bits if dtype == "bfloat16" else \
            np.random.default_rng(0).standard_normal(4096).astype(np.float32)
        scale = None
    if dtype == "float16":
        finite = np.isfinite(values)
    elif dtype == "bfloat16":
        finite = (bits & 0x7F80) != 0x7F80
    else:
        finite = np.ones(values.shape, bool)
    ok = values[finite] if dtype != "int8" else values
    out = np.empty(ok.shape, np.float32)
    assert not convert(ok, scale, dtype, out)
    np.testing.assert_array_equal(out, decode(ok, scale, dtype))
    with pytest.raises(ValueError, match="cannot convert"):  # never past the end of a smaller output
        convert(ok, scale, dtype, np.empty(ok.size - 1, np.float32))
    copied = np.empty_like(ok)
    assert not convert(ok, scale, dtype, copied)
    np.testing.assert_array_equal(copied, ok)
    if dtype == "int8":
        bad_scale = scale.copy()
        bad_scale[3] = np.nan
        assert convert(values, bad_scale, dtype, out) and convert(values, bad_scale, dtype, copied)
        return
    nonfinite = values[~finite] if dtype != "float32" else np.array([np.inf, -np.inf, np.nan], np.float32)
    for v in nonfinite[:: max(1, len(nonfinite) // 50)]:
        bad = ok.copy()
        bad[len(bad) // 2] = v
        assert convert(bad, None, dtype, np.empty(bad.shape, np.float32)), v
        assert convert(bad, None, dtype, np.empty_like(bad)), v
