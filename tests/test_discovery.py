"""Discovery and mask merging at the cost of what they touch: the folder index of a tree gives exactly what a
regex over every path gives; archive trees are read by member and reused across tasks while unchanged; masks
merged by their foreground's box give the same masks, instance maps and overlap counts."""

from __future__ import annotations

import io
import os
import re
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from medprep.prep import get_converter
from medprep.prep.archive import open_tree
from medprep.prep.imaging import binarize, binarize_box, unbox
from medprep.prep.tree import LayoutError, SourceTree, _glob_regex, natural_key, natural_sorted

NAMES = ["a", "A", "b", "img1.png", "img01.png", "IMG2.PNG", "img10.png", "x[1].png", "a-b", "a.b", "masks",
         "Masks", "s1", "s10", "s2", "é.png"]
NESTED = {f"{d}/{s}/{n}" for d in ("a", "A", "a-b", "masks") for s in ("masks", "Masks", "s1", "x[1].png")
          for n in NAMES}
FILES = sorted(NESTED | {f"{d}/{n}" for d in ("s10", "s2") for n in NAMES} | {f"a/{n}" for n in NAMES[3:7]}
               | set(NAMES[3:8]))
PATTERNS = ["*", "*/*", "a/*", "*/masks/*.png", "*/Masks/*", "a/masks/img1.png", "A/*.png", "*/*/img1.png",
            "img?.png", "x[[]1].png", "*[0-9]*", "[ab]/*", "[a/b]*", "a//b", "/a", "a/", "", "*.png", "*/*/*",
            "é.png", "É.PNG", "a[/]masks/*", "[!a]*/*", "s*/*", "a/x[[]1].png/*", "*/s1/IMG2.png"]


def reference_glob(files: list[str], pattern: str, ignore_case: bool) -> list[str]:
    """The definition: every path matched as a whole, in natural order with ties in path order."""
    rx = re.compile(_glob_regex(pattern), re.IGNORECASE if ignore_case else 0)
    return sorted((f for f in sorted(files) if rx.fullmatch(f)), key=natural_key)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> SourceTree:
    root = tmp_path_factory.mktemp("tree")
    for f in FILES:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).touch()
    (root / ".hidden").touch()
    return SourceTree(root)


def test_tree_lists_every_file_in_path_order(tree):
    assert tree.files == sorted(FILES)


@pytest.mark.parametrize("ignore_case", [False, True])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_glob_through_the_folder_index_is_the_regex_over_every_path(tree, pattern, ignore_case):
    assert tree.glob(pattern, ignore_case=ignore_case) == reference_glob(FILES, pattern, ignore_case)


@pytest.mark.parametrize("marker", ["masks/*.png", "*/s1/IMG2.PNG", "s1/img?.png", "Masks/x[[]1].png", "*.png"])
def test_find_root_from_the_index_is_the_shallowest_matching_folder(tree, marker):
    prefixes = sorted({"/".join(f.split("/")[:d]) for f in FILES for d in range(4) if f.count("/") >= d},
                      key=lambda p: (p.count("/") + bool(p), p))
    escaped = {p: re.sub(r"([*?[])", r"[\1]", p) for p in prefixes}  # the prefix as a glob of itself
    expected = next(p for p in prefixes if reference_glob(FILES, f"{escaped[p]}/{marker}" if p else marker, False))
    assert tree.find_root(marker, "x") == expected


def test_find_root_failure_names_the_top_level(tree):
    with pytest.raises(LayoutError, match=r"x: expected nothing/\*\.png under .*found A/, IMG2.PNG, a-b/, "):
        tree.find_root("nothing/*.png", "x")


def test_tar_members_are_read_by_their_header_and_the_tree_is_reused_until_the_archive_changes(tmp_path):
    def write(path: Path, tag: bytes) -> None:
        with tarfile.open(path, "w") as tf:
            for i in range(300):
                data = tag + str(i).encode()
                info = tarfile.TarInfo(f"ds/f{i:03d}.txt")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    path = tmp_path / "ds.tar"
    write(path, b"old")
    first = open_tree(path, reuse=True)
    assert first.read("ds/f000.txt") == b"old0" and first.read("ds/f299.txt") == b"old299"
    assert open_tree(path, reuse=True) is first
    assert open_tree(path) is not first  # only tasks ask for reuse
    write(path, b"new-content")  # same names, other bytes: the tree is mounted again
    os.utime(path, ns=(1, 1))
    again = open_tree(path, reuse=True)
    assert again is not first and again.read("ds/f007.txt") == b"new-content7"


def test_folder_of_archives_reopens_when_an_archive_is_added(tmp_path):
    (tmp_path / "dl").mkdir()
    with zipfile.ZipFile(tmp_path / "dl" / "one.zip", "w") as zf:
        zf.writestr("one/a.png", b"a")
    first = open_tree(tmp_path / "dl", reuse=True)
    with zipfile.ZipFile(tmp_path / "dl" / "two.zip", "w") as zf:
        zf.writestr("two/b.png", b"b")
    again = open_tree(tmp_path / "dl", reuse=True)
    assert again is not first and again.files == ["one/a.png", "two/b.png"]


def masks_of(rng: np.random.Generator, hw: tuple[int, int], n: int, value: int = 255) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        m = np.zeros(hw, np.uint8)
        cv2.circle(m, (int(rng.integers(0, hw[1])), int(rng.integers(0, hw[0]))), int(rng.integers(1, 9)), value, -1)
        out.append(m)
    return out


@pytest.mark.parametrize("value", [1, 255, 77])
def test_binarize_box_holds_the_whole_foreground(value):
    rng = np.random.default_rng(value)
    for m in masks_of(rng, (40, 56), 30, value) + [np.zeros((5, 7), np.uint8), np.eye(4, dtype=np.uint8) * value]:
        box, fg = binarize_box(m, "m.png")
        assert fg.dtype == bool and np.array_equal(unbox(box, fg, m.shape), m > 0)
        assert np.array_equal(binarize(m, "m.png"), m > 0)
        outside = np.ones(m.shape, bool)
        outside[box] = False
        assert not m[outside].any()


def test_dsb_instance_map_and_overlap_of_overlapping_nuclei(tmp_path):
    rng = np.random.default_rng(3)
    hw = (48, 64)
    nuclei = masks_of(rng, hw, 25)  # circles that overlap each other
    files = {"c/images/c.png": np.full(hw + (3,), 90, np.uint8)} | {f"c/masks/{i:02d}.png": m
                                                                    for i, m in enumerate(nuclei)}
    for rel, arr in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), arr)
    conv = get_converter("dsb2018")
    tree = SourceTree(tmp_path)
    (rec,), _ = conv.discover(tree)
    loaded = conv.load({f: tree.read(f) for f in rec.files()}, rec)
    inst, overlap = np.zeros(hw, np.uint16), 0
    for n, m in enumerate(nuclei, start=1):  # the definition: paint in order, count what was already painted
        overlap += int(np.count_nonzero((m > 0) & (inst > 0)))
        inst[m > 0] = n
    assert overlap > 0
    assert np.array_equal(loaded.inst, inst) and np.array_equal(loaded.mask, inst > 0)
    assert loaded.info == {"instances": len(nuclei), "overlap_pixels": overlap}


def test_natural_sorted_is_the_stable_sort_by_natural_key():
    """The head-first sort against the definition on 20,000 random lists: names sharing prefixes of every length,
    digit runs across the head's end, case, separators that sort below digits, non-ASCII digits and case."""
    import hashlib
    import random

    rng = random.Random(0)
    alpha = "0123456789abcdefABCDEF._- /\u0663\u0130xyz"
    for _ in range(20000):
        base = "".join(rng.choice(alpha) for _ in range(rng.randint(0, 14)))
        items = []
        for _ in range(rng.randint(0, 12)):
            keep = base[:rng.randint(0, len(base))] if rng.random() < 0.5 else ""
            items.append(keep + "".join(rng.choice(alpha) for _ in range(rng.randint(0, 24))))
        assert natural_sorted(items) == sorted(items, key=natural_key), items
    hexes = [hashlib.sha256(str(i).encode()).hexdigest() + ".png" for i in range(500)]
    assert natural_sorted(hexes) == sorted(hexes, key=natural_key)
    assert natural_sorted(hexes, lambda s: s[3:]) == sorted(hexes, key=lambda s: natural_key(s[3:]))


def test_read_stamped_reads_whole_files_and_names_what_it_cannot(tmp_path):
    """Empty, one-byte and multi-MiB files come back whole with their (size, mtime); a folder or a missing file
    raises the OSError of its kind, naming the path (it becomes the input's failure reason)."""
    import os

    rng = np.random.default_rng(0)
    for n, size in enumerate([0, 1, 4099, 3 << 20]):
        (tmp_path / f"f{n}.png").write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    (tmp_path / "folder.png").mkdir()
    tree = SourceTree(tmp_path)
    for n in range(4):
        data, stamp = tree.read_stamped(f"f{n}.png")
        st = os.stat(tmp_path / f"f{n}.png")
        assert data == (tmp_path / f"f{n}.png").read_bytes() and stamp == (st.st_size, st.st_mtime_ns)
    with pytest.raises(IsADirectoryError, match="folder.png"):
        tree.read_stamped("folder.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tree.read_stamped("missing.png")


def test_unclaimed_counts_strays_beside_claimed_paths_the_tree_lacks(tmp_path):
    """A folder is part of the layout when a claimed path lies in it, even one the tree does not hold (a failure
    may name an expected file): its other files are strays with their reason; side files and folders without
    claimed paths are left alone."""
    from medprep.prep.datasets import Failure, Record
    from medprep.prep.unclaimed import unclaimed

    for rel in ("imgs/a.png", "imgs/b.png", "imgs/notes.txt", "gone/extra.bmp", "elsewhere/c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    tree = SourceTree(tmp_path)
    conv = get_converter("kvasir-seg")
    found = unclaimed(conv, tree, [Record("a", "imgs/a.png", ())], [Failure("z", ("gone/z.png",), "missing")])
    assert sorted(f.files[0] for f in found) == ["gone/extra.bmp", "imgs/b.png"]
    assert all("unexpected file" in f.reason for f in found)
    assert "extension .bmp" in next(f.reason for f in found if f.files[0] == "gone/extra.bmp")
