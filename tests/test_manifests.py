"""The built-data format layer: the shard writer, the readers' integrity checks, ``verify``, and the rule that only
``medprep.manifests`` opens or writes a shard tar."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medprep.cli import app
from medprep.loaders import MedShards, MedShardsIndexed
from medprep.manifests import (
    GenerationError, Manifest, ShardError, TarShard, open_dataset, tar_bytes, verify,
)
from medprep.manifests.tar import stream_samples
from medprep.prep import build, synthetic

REPO = Path(__file__).resolve().parents[1]
BUILD = dict(size=64, shard_samples=3)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifests-src")
    return synthetic.make("dsb2018", root / "src", n=14)


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory):
    return build("dsb2018", src, tmp_path_factory.mktemp("manifests-ref"), **BUILD).out


@pytest.fixture
def ds_path(reference, tmp_path) -> Path:
    """A private copy of the reference build, to damage."""
    return Path(shutil.copytree(reference, tmp_path / "dsb2018"))


def members_of(root: Path, shard: str) -> dict[str, bytes]:
    """``<key>.<entry>`` -> bytes of one shard, in tar order (read through the checked reader)."""
    out = {}
    for sample in open_dataset(root).read_shard(shard):
        out.update({f"{sample['__key__']}.{e}": v for e, v in sample.items() if not e.startswith("__")})
    return out


def rewrite_manifest(root: Path, edit, regenerate: bool = True) -> None:
    """Apply ``edit`` to the manifest document; with ``regenerate`` the generation is made to match again (a
    consistent manifest, so that only the shard contents disagree)."""
    doc = json.loads((root / "manifest.json").read_text())
    edit(doc)
    if regenerate:
        doc["generation"] = Manifest.from_json({**doc, "generation": "x"}).content_generation()
    (root / "manifest.json").write_text(json.dumps(doc))


def first_train(root: Path) -> str:
    return open_dataset(root).manifest.shards_of("train")[0].name


# -------------------------------------------------------------------------------------------------- the writer


def test_one_writer_small_tars_and_shards_share_the_byte_layout(reference):
    name = first_train(reference)
    assert tar_bytes(members_of(reference, name)) == (reference / name).read_bytes()


def test_tar_shard_size_arithmetic_is_exact(tmp_path):
    sample = {"__key__": "k-" + "x" * 120, "image.png": b"a" * 700, "modality.cls": b"1"}  # one PAX header
    w = TarShard(tmp_path / "s.tar")
    w.write(sample)
    nbytes, digest = w.close()
    assert nbytes == TarShard.total_bytes(TarShard.member_bytes(sample)) == (tmp_path / "s.tar").stat().st_size
    assert digest == hashlib.sha256((tmp_path / "s.tar").read_bytes()).hexdigest()


# -------------------------------------------------------------------------------------------------- the readers


def test_manifest_records_a_deterministic_generation(reference, src, tmp_path):
    ds = open_dataset(reference)
    assert len(ds.generation) == 16 and ds.generation == ds.manifest.content_generation()
    again = build("dsb2018", src, tmp_path, **BUILD).out
    assert open_dataset(again).generation == ds.generation
    other = build("dsb2018", src, tmp_path / "seed1", seed=1, **BUILD).out
    assert open_dataset(other).generation != ds.generation


def test_shard_cut_at_a_sample_boundary_raises(ds_path):
    name = first_train(ds_path)
    data = (ds_path / name).read_bytes()
    third = open_dataset(ds_path).index_shard(name).samples[2]
    cut = next(iter(third.entries.values()))[0] - 512  # the header of its first member
    (ds_path / name).write_bytes(data[:cut])  # the first two samples, no end marker
    with pytest.raises(ShardError, match=rf"shard {name} of {ds_path}: \d+ bytes, the manifest says"):
        list(MedShards(ds_path, fields=["key"], shuffle=False))
    with open(ds_path / name, "rb") as f, pytest.raises(ShardError, match=f"{name}: no tar end marker"):
        list(stream_samples(f, name))


def test_shard_with_fewer_samples_than_the_manifest_says_raises(ds_path):
    """A whole tar with 2 of its 3 samples, and a manifest that agrees on its bytes and sha: the count check."""
    name = first_train(ds_path)
    members = members_of(ds_path, name)
    keep = {k: v for k, v in members.items() if k.split(".")[0] in list(dict.fromkeys(
        m.split(".")[0] for m in members))[:2]}
    (ds_path / name).write_bytes(tar_bytes(keep))

    size = (ds_path / name).stat().st_size

    def shrink(doc):
        entry = next(s for s in doc["shards"] if s["name"] == name)
        entry["bytes"], entry["sha256"] = size, hashlib.sha256((ds_path / name).read_bytes()).hexdigest()

    rewrite_manifest(ds_path, shrink)
    wids = json.loads((ds_path / "train.wids.json").read_text())
    wids["shardlist"][0]["filesize"] = size
    (ds_path / "train.wids.json").write_text(json.dumps(wids))
    got = []
    with pytest.raises(ShardError, match=rf"shard {name} of {ds_path}: holds 2 samples .* the manifest says 3"):
        for s in MedShards(ds_path, fields=["key"], shuffle=False):
            got.append(s["key"])
    assert len(got) <= 2
    with pytest.raises(ShardError, match=rf"shard {name} of {ds_path}: holds 2 samples"):
        MedShardsIndexed(ds_path, "train", ["key"]).keys()


def test_shard_cut_in_the_middle_of_a_member_raises(ds_path):
    name = first_train(ds_path)
    data = (ds_path / name).read_bytes()
    (ds_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=rf"shard {name} of {ds_path}: \d+ bytes, the manifest says"):
        list(MedShards(ds_path, fields=["image", "key"], shuffle=False))
    with pytest.raises(ShardError, match=rf"shard {name} of {ds_path}"):
        MedShardsIndexed(ds_path, "train", ["key"])[0]
    with open(ds_path / name, "rb") as f, pytest.raises(ShardError, match=r"sample dsb2018-\w+: member .* cut short"):
        list(stream_samples(f, name))


@pytest.mark.parametrize("rename", ["slash", "other key"])
def test_renamed_member_raises_with_key_and_shard(ds_path, rename):
    name = first_train(ds_path)
    members = members_of(ds_path, name)
    keys = list(dict.fromkeys(m.split(".")[0] for m in members))
    if rename == "slash":  # same length, so the file keeps its size
        renamed = {(m.replace(".mask.png", "/mask.png") if m.startswith(keys[1]) else m): v for m, v in members.items()}
        message = r"member 'dsb2018-\w+/mask\.png' is not named <key>\.<entry>"
    else:  # sample 1's key on a member of sample 3 (keys have the same length; another entry name, so no clash)
        renamed = {(f"{keys[0]}.mask.pn_" if m == f"{keys[2]}.mask.png" else m): v for m, v in members.items()}
        message = rf"sample {keys[0]} appears in two places"
    (ds_path / name).write_bytes(tar_bytes(renamed))
    assert (ds_path / name).stat().st_size == open_dataset(ds_path).entry(name).bytes
    with pytest.raises(ShardError, match=rf"shard {name} of {ds_path}: {message}"):
        list(MedShards(ds_path, fields=["key"], shuffle=False))
    with pytest.raises(ShardError, match=rf"shard {name} of {ds_path}: {message}"):
        MedShardsIndexed(ds_path, "train", ["key"])[0]
    assert any(p.startswith(f"{name}: ") for p in open_dataset(ds_path).verify())


def test_dataset_replaced_under_an_open_medshards_iteration_raises(src, tmp_path):
    out = build("dsb2018", src, tmp_path, **BUILD).out
    loader = MedShards(out, fields=["key"], shuffle=False)
    it = iter(loader)
    first = next(it)["key"]
    build("dsb2018", src, tmp_path, seed=1, overwrite=True, **BUILD)  # another build swapped in at the same path
    with pytest.raises(GenerationError, match=rf"shard train-\d+\.tar of {out}: the dataset was replaced by another "
                                              rf"build \(generation \w+\) while this reader was reading generation"):
        for _ in it:
            pass
    assert first
    reopened = [s["key"] for s in MedShards(out, fields=["key"], shuffle=False)]  # the new build reads fine
    assert reopened == open_dataset(out).keys("train")


def test_dataset_replaced_under_an_open_medshards_indexed_raises(src, tmp_path):
    out = build("dsb2018", src, tmp_path, **BUILD).out
    ds = MedShardsIndexed(out, "train", ["key", "image"])
    assert ds[0]["key"]
    build("dsb2018", src, tmp_path, seed=1, overwrite=True, **BUILD)
    for i in (0, len(ds) - 1):  # a shard whose index is cached, and one opened after the swap
        with pytest.raises(GenerationError, match=rf"shard train-\d+\.tar of {out}: the dataset was replaced"):
            ds[i]
    shutil.rmtree(out)
    with pytest.raises(GenerationError, match="manifest.json is gone"):
        ds[0]


def test_identical_rebuild_keeps_readers_going(src, tmp_path):
    out = build("dsb2018", src, tmp_path, **BUILD).out
    ds = MedShardsIndexed(out, "train", ["key"])
    before = [ds[i]["key"] for i in range(len(ds))]
    shutil.rmtree(out)
    build("dsb2018", src, tmp_path, **BUILD)  # same content: same generation, a new manifest file
    assert [ds[i]["key"] for i in range(len(ds))] == before


# -------------------------------------------------------------------------------------------------- verify


def problems(root: Path) -> list[str]:
    report = verify(root)
    assert report.ok == (not report.problems)
    return [str(p) for p in report.problems]


def test_verify_passes_a_fresh_build_and_allows_later_files(ds_path):
    for name in ("card.json", "README.md", "recipe.toml", "leakage.json"):
        (ds_path / name).write_text("{}")
    assert problems(ds_path) == []


def test_verify_missing_and_non_json_files_are_problems_not_tracebacks(ds_path):
    (ds_path / "samples.jsonl").unlink()
    assert "samples.jsonl: missing: every build writes it" in problems(ds_path)
    (ds_path / "samples.jsonl").write_text("{not json\n")
    assert any(p.startswith("samples.jsonl: line 1 is not JSON") for p in problems(ds_path))
    (ds_path / "manifest.json").write_text("[1, 2")
    about_manifest = [p for p in problems(ds_path) if p.startswith("manifest.json")]
    assert len(about_manifest) == 1 and about_manifest[0].startswith("manifest.json: not JSON")
    (ds_path / "manifest.json").unlink()
    assert any(p.startswith("manifest.json: missing") for p in problems(ds_path))


def test_verify_manifest_schema_and_format_version(ds_path):
    rewrite_manifest(ds_path, lambda d: d.update(format="medprep-manifest-v9"), regenerate=False)
    assert problems(ds_path) == ["manifest.json: format is 'medprep-manifest-v9', expected one of "
                                 "medprep-manifest-v1, medprep-manifest-v2 (not a medprep build, or one written by "
                                 "another medprep version)"]
    rewrite_manifest(ds_path, lambda d: d.update(format="medprep-manifest-v2", modality_id="2", extra=1),
                     regenerate=False)
    got = problems(ds_path)
    assert "manifest.json: unknown field 'extra'" in got
    assert "manifest.json: field 'modality_id' is str, expected int" in got


def test_verify_nsamples_999(ds_path):
    name = first_train(ds_path)
    rewrite_manifest(ds_path, lambda d: d["shards"][0].update(nsamples=999), regenerate=False)
    got = problems(ds_path)
    assert f"{name}: holds 3 samples, the manifest says 999" in got
    assert any("generation" in p and "was edited" in p for p in got)
    assert any(p.startswith("manifest.json: counts.samples is 14 but its shards hold") for p in got)
    assert any(p.startswith("train.wids.json: shardlist[0]") for p in got)


def test_verify_dropped_shard_entry(ds_path):
    name = first_train(ds_path)
    rewrite_manifest(ds_path, lambda d: d["shards"].pop(0))
    got = problems(ds_path)
    assert f"{name}: shard not listed in the manifest" in got
    assert any(p.startswith("samples.jsonl: line 1") and f"shard {name} is not in the manifest" in p for p in got)
    assert "samples.jsonl: lists 14 samples, the manifest's shards hold 11" in got


def test_verify_empty_shard_list_with_samples(ds_path):
    rewrite_manifest(ds_path, lambda d: d.update(shards=[]))
    got = problems(ds_path)
    assert "manifest.json: lists no shards but 14 samples" in got
    assert any(p.endswith("shard not listed in the manifest") for p in got)


def test_verify_zero_byte_shard_with_a_matching_sha(ds_path):
    name = first_train(ds_path)
    (ds_path / name).write_bytes(b"")
    rewrite_manifest(ds_path, lambda d: d["shards"][0].update(bytes=0, sha256=hashlib.sha256(b"").hexdigest()))
    got = problems(ds_path)
    assert any(p.startswith(f"{name}: not a readable tar") for p in got)
    assert f"{name}: holds 0 samples, the manifest says 3" not in got  # unreadable: not counted as 0


def test_verify_shard_missing_and_wids_escaping_the_folder(ds_path):
    name = first_train(ds_path)
    (ds_path / name).unlink()
    wids = json.loads((ds_path / "train.wids.json").read_text())
    wids["shardlist"][0]["url"] = "../../etc/passwd"
    wids["shardlist"][1]["url"] = "/etc/passwd"
    wids["shardlist"][2]["nsamples"] = 5
    (ds_path / "train.wids.json").write_text(json.dumps(wids))
    (ds_path / "test.wids.json").unlink()
    got = problems(ds_path)
    assert f"{name}: missing" in got
    assert sum("is not a plain shard name inside the dataset folder" in p for p in got) == 2
    assert any(p.startswith("train.wids.json: shardlist[2]") and "nsamples 5" in p for p in got)
    assert "test.wids.json: missing: the wids index of split test" in got
    with pytest.raises(ValueError, match="disagrees with manifest.json"):
        MedShardsIndexed(ds_path, "train")


def test_verify_stray_files_and_keys_against_samples_list(ds_path):
    (ds_path / "notes.txt").write_text("x")
    (ds_path / "sub").mkdir()
    rows = (ds_path / "samples.jsonl").read_text().splitlines()
    rows[0], rows[1] = rows[1], rows[0]
    (ds_path / "samples.jsonl").write_text("\n".join(rows) + "\n")
    got = problems(ds_path)
    assert "notes.txt: unexpected file: not written by 'medprep build'" in got
    assert "sub: unexpected folder in a built dataset" in got
    assert "samples.jsonl: sha256 differs from the manifest" in got
    assert f"{first_train(ds_path)}: samples are in another order than in samples.jsonl" in got


def test_cli_verify_exits_1_listing_every_problem(ds_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(ds_path)])
    assert ok.exit_code == 0 and ok.output.startswith("ok: 6 shards, 14 samples")
    (ds_path / "stray.bin").write_bytes(b"x")
    (ds_path / "samples.jsonl").write_text("nope\n")
    bad = runner.invoke(app, ["verify", str(ds_path)])
    assert bad.exit_code == 1 and isinstance(bad.exception, SystemExit)  # typer.Exit, not a crash
    lines = bad.output.splitlines()
    assert "FAIL stray.bin: unexpected file: not written by 'medprep build'" in lines
    assert any(line.startswith("FAIL samples.jsonl: line 1 is not JSON") for line in lines)
    report = json.loads(runner.invoke(app, ["verify", "--json", str(ds_path)]).output)
    assert report["ok"] is False and {"file": "stray.bin", "message": "unexpected file: not written by 'medprep "
                                                                       "build'"} in report["problems"]
    (ds_path / "manifest.json").write_text("{")
    broken = runner.invoke(app, ["verify", str(ds_path)])
    assert broken.exit_code == 1 and isinstance(broken.exception, SystemExit)
    assert any(line.startswith("FAIL manifest.json: not JSON") for line in broken.output.splitlines())
    missing = runner.invoke(app, ["verify", str(ds_path / "nothing-here")])
    assert missing.exit_code == 1 and isinstance(missing.exception, SystemExit)
    assert "is not a folder" in missing.output


# -------------------------------------------------------------------------------------------------- the rule


ALLOWED = {"prep/archive.py"}  # reads download archives (zip/tar of the official layouts), never a shard
FORBIDDEN = ("tarfile", "webdataset")


def test_only_manifests_imports_tarfile_or_webdataset():
    offenders = []
    for folder in ("prep", "loaders", "distill", "medprep"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{rel}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == [], "only medprep.manifests opens or writes a shard tar:\n" + "\n".join(offenders)
    assert "import tarfile" in (REPO / "prep/archive.py").read_text()  # the exception is still needed
