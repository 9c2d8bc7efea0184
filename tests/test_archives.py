"""Official archives as --src: read in place, same bytes as the extracted folder, unsafe archives refused."""

from __future__ import annotations

import io
import json
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medprep.cli import app
from medprep.manifests import sha256_file, tar_bytes
from medprep.prep import build, synthetic
from medprep.prep.archive import ArchiveError, ArchiveTree, Limits, open_tree
from medprep.prep.tree import SourceTree

SIZE = 64


def assert_same_build(a: Path, b: Path) -> None:
    """Two builds are byte-identical: manifest, samples, failures and every shard."""
    for name in ("manifest.json", "samples.jsonl", "failures.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    shards = json.loads((a / "manifest.json").read_text())["shards"]
    assert shards
    for s in shards:
        assert sha256_file(a / s["name"]) == sha256_file(b / s["name"]) == s["sha256"]


def extracted_and_archived(kind: str, tmp: Path) -> tuple[str, Path, Path]:
    """(dataset, extracted folder, archive or folder of archives) for the real downloads' archive shapes."""
    if kind == "kvasir-seg.zip":
        folder = synthetic.make("kvasir-seg", tmp / "x", n=4)
        return "kvasir-seg", tmp / "x", synthetic.pack(folder, tmp / "dl" / "kvasir-seg.zip")
    if kind == "DRIVE.zip":
        folder = synthetic.make("drive", tmp / "x", n_train=3, n_test=2)
        return "drive", tmp / "x", synthetic.pack(folder, tmp / "dl" / "DRIVE.zip")
    if kind == "BUSI.tar.gz":
        folder = synthetic.make("busi", tmp / "x", n=(2, 2, 1))
        return "busi", tmp / "x", synthetic.pack(folder, tmp / "dl" / "Dataset_BUSI.tar.gz")
    if kind == "ISIC six zips":
        folder = synthetic.make("isic2018", tmp / "x", n=(3, 1, 1))
        for part in sorted(folder.iterdir()):
            synthetic.pack(part, tmp / "dl" / f"{part.name}.zip")
        return "isic2018", folder, tmp / "dl"
    if kind == "STARE tars":
        synthetic.make("stare", tmp / "x", n=5, labelled=3, archives=False)
        return "stare", tmp / "x" / "STARE", synthetic.make("stare", tmp / "dl", n=5, labelled=3)
    if kind == "STARE tars in a zip":
        synthetic.make("stare", tmp / "x", n=5, labelled=3, archives=False)
        tars = synthetic.make("stare", tmp / "t", n=5, labelled=3)
        return "stare", tmp / "x", synthetic.pack(tars, tmp / "dl" / "STARE.zip")
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["kvasir-seg.zip", "DRIVE.zip", "BUSI.tar.gz", "ISIC six zips", "STARE tars",
                                  "STARE tars in a zip"])
def test_archive_gives_the_same_bytes_as_the_extracted_folder(tmp_path, kind):
    dataset, folder, archive = extracted_and_archived(kind, tmp_path)
    assert isinstance(open_tree(archive), ArchiveTree) and type(open_tree(folder)) is SourceTree
    a = build(dataset, archive, tmp_path / "out-archive", size=SIZE, shard_samples=3)
    b = build(dataset, folder, tmp_path / "out-folder", size=SIZE, shard_samples=3)
    assert a.manifest.counts["samples"] > 0
    assert_same_build(a.out, b.out)


def test_archive_build_with_dask_workers(tmp_path):
    dataset, folder, archive = extracted_and_archived("ISIC six zips", tmp_path)
    a = build(dataset, archive, tmp_path / "out-archive", size=SIZE, shard_samples=2, workers=2)
    b = build(dataset, folder, tmp_path / "out-folder", size=SIZE, shard_samples=2)
    assert_same_build(a.out, b.out)


def test_mount_rules_and_macosx(tmp_path):
    """One top folder is kept, loose files go under the archive's name, __MACOSX and dot files are skipped."""
    with zipfile.ZipFile(tmp_path / "TNBC.zip", "w") as zf:
        zf.writestr("TNBC_NucleiSegmentation/Slide_01/01_1.png", b"x")
        zf.writestr("__MACOSX/TNBC_NucleiSegmentation/Slide_01/._01_1.png", b"junk")
        zf.writestr("TNBC_NucleiSegmentation/.DS_Store", b"junk")
    assert open_tree(tmp_path / "TNBC.zip").files == ["TNBC_NucleiSegmentation/Slide_01/01_1.png"]
    with zipfile.ZipFile(tmp_path / "loose.zip", "w") as zf:
        zf.writestr("a.png", b"a")
        zf.writestr("sub/b.png", b"b")
    tree = open_tree(tmp_path / "loose.zip")
    assert tree.files == ["loose/a.png", "loose/sub/b.png"] and tree.read("loose/sub/b.png") == b"b"
    # a folder holding a download and its extracted copy is read as the extracted folder
    (tmp_path / "dl").mkdir()
    shutil.copy(tmp_path / "loose.zip", tmp_path / "dl")
    (tmp_path / "dl" / "loose").mkdir()
    (tmp_path / "dl" / "loose" / "a.png").write_bytes(b"a")
    assert type(open_tree(tmp_path / "dl")) is SourceTree


def zip_with(path: Path, name: str, data: bytes = b"x", mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok/fine.png", b"fine")
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data, zipfile.ZIP_DEFLATED)
    return path


@pytest.mark.parametrize("member", ["../evil.png", "ok/../../evil.png", "/etc/evil.png", "C:/evil.png",
                                    "..\\evil.png"])
def test_path_traversal_is_refused(tmp_path, member):
    archive = zip_with(tmp_path / "bad.zip", member)
    with pytest.raises(ArchiveError, match="path traversal") as e:
        open_tree(archive)
    assert repr(member) in str(e.value) and "bad.zip" in str(e.value)


def test_cli_refuses_a_traversal_zip(tmp_path):
    archive = zip_with(tmp_path / "kvasir-seg.zip", "Kvasir-SEG/../../evil.jpg")
    r = CliRunner().invoke(app, ["build", "--dataset", "kvasir-seg", "--src", str(archive), "--out",
                                 str(tmp_path / "out"), "--size", str(SIZE)])
    assert r.exit_code == 2
    assert "Kvasir-SEG/../../evil.jpg" in r.output and "outside the extraction folder" in r.output
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "out").exists()


def test_links_and_special_members_are_refused(tmp_path):
    with pytest.raises(ArchiveError, match="symbolic link"):
        open_tree(zip_with(tmp_path / "l.zip", "ok/link.png", b"/etc/passwd", mode=stat.S_IFLNK | 0o777))
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo("data/x.png")
            info.type, info.linkname = kind, "../../etc/passwd"
            tf.addfile(info)
        (tmp_path / "t.tar").write_bytes(buf.getvalue())
        with pytest.raises(ArchiveError, match="link|special file"):
            open_tree(tmp_path / "t.tar")


def test_decompression_bombs_are_refused(tmp_path):
    zeros = b"\0" * (4 << 20)  # 4 MiB of zeros deflate ~1000:1
    bomb = zip_with(tmp_path / "bomb.zip", "ok/zeros.bmp", zeros)
    with pytest.raises(ArchiveError, match="ratio over 100"):
        ArchiveTree(bomb, Limits(max_ratio=100))
    with pytest.raises(ArchiveError, match="max_member"):
        ArchiveTree(bomb, Limits(max_member=1 << 20))
    with pytest.raises(ArchiveError, match="max_total"):
        ArchiveTree(bomb, Limits(max_total=2 << 20))
    assert len(ArchiveTree(bomb).read("ok/zeros.bmp")) == len(zeros)  # within the default limits
    gz = tmp_path / "bomb.tar.gz"
    gz.write_bytes(tar_bytes({"a/zeros.bin": zeros}, gz=True))
    with pytest.raises(ArchiveError, match="ratio over 100"):
        ArchiveTree(gz, Limits(max_ratio=100))
    # archives nested deeper than allowed
    inner = tar_bytes({"x/a.png": b"a"})
    for level in range(3):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(f"l{level}/inner{level}.{'tar' if level == 0 else 'zip'}", inner)
        inner = buf.getvalue()
        (tmp_path / f"nested{level}.zip").write_bytes(inner)
    tree = open_tree(tmp_path / "nested1.zip")  # a tar in a zip in a zip: read in place
    assert tree.files == ["l1/l0/x/a.png"] and tree.read("l1/l0/x/a.png") == b"a"
    with pytest.raises(ArchiveError, match="deeper than 2"):
        open_tree(tmp_path / "nested2.zip")


def test_damaged_unsupported_and_duplicate_archives(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(ArchiveError, match="download it again"):
        open_tree(tmp_path / "broken.zip")
    (tmp_path / "set.7z").write_bytes(b"7z\xbc\xaf\x27\x1c")
    with pytest.raises(ArchiveError, match="unpack it"):
        open_tree(tmp_path / "set.7z")
    (tmp_path / "dup").mkdir()
    for name in ("a.zip", "b.zip"):
        with zipfile.ZipFile(tmp_path / "dup" / name, "w") as zf:
            zf.writestr("Data/x.png", name.encode())
    with pytest.raises(ArchiveError, match="Data/x.png is in .*a.zip and again in .*b.zip"):
        open_tree(tmp_path / "dup")
