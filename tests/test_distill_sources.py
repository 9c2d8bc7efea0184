"""Sources of the teacher cache: SA-1B tars in the real format, image folders, built medical datasets."""

from __future__ import annotations

import numpy as np
import pytest

from medprep.distill import FolderSource, MedicalSource, SA1BSource, SourceSpec, open_source
from medprep.distill.synthetic import write_image_folder, write_sa1b_tar
from medprep.prep import build, synthetic


@pytest.fixture(scope="module")
def sa1b(tmp_path_factory):
    root = tmp_path_factory.mktemp("sa1b")
    rng = np.random.default_rng(0)
    write_sa1b_tar(root / "sa_000001.tar", [1001, 12, 3, 2000], rng, sizes=[(48, 64), (64, 40), (30, 30), (20, 64)])
    write_sa1b_tar(root / "sa_000000.tar", list(range(100, 160)), rng, prefix="./")
    (root / "notes.txt").write_text("not a tar")
    return root


def test_sa1b_keys_order_and_decoding(sa1b):
    src = open_source(SourceSpec(str(sa1b)))
    assert isinstance(src, SA1BSource)
    # tar name order, then N (numeric, not the member order in the tar)
    assert src.keys[:60] == [f"sa1b-sa_{n}" for n in range(100, 160)]
    assert src.keys[60:] == ["sa1b-sa_3", "sa1b-sa_12", "sa1b-sa_1001", "sa1b-sa_2000"]
    image, valid = src.load(src.keys.index("sa1b-sa_12"))
    assert image.shape == (64, 40, 3) and image.dtype == np.uint8 and valid is None
    assert src.describe()["kind"] == "sa1b"


def test_sa1b_fraction_subset_is_deterministic(sa1b):
    a = SA1BSource(str(sa1b), fraction=0.3, seed=7)
    b = SA1BSource(str(sa1b), fraction=0.3, seed=7)
    c = SA1BSource(str(sa1b), fraction=0.3, seed=8)
    assert a.keys == b.keys and a.keys != c.keys
    assert 5 <= len(a.keys) <= 36
    # membership depends on the key alone: the same images are picked from one tar on its own
    one = SA1BSource([str(sa1b / "sa_000000.tar")], fraction=0.3, seed=7)
    assert one.keys == [k for k in a.keys if 100 <= int(k.split("_")[1]) < 160]
    assert a.describe()["keys_sha256"] == b.describe()["keys_sha256"] != c.describe()["keys_sha256"]


def test_sa1b_subset_file(sa1b, tmp_path):
    sub = tmp_path / "subset.txt"
    sub.write_text("sa_3\nsa_101.jpg\nsa1b-sa_2000\n\n")
    assert SA1BSource(str(sa1b), subset_file=str(sub)).keys == ["sa1b-sa_101", "sa1b-sa_3", "sa1b-sa_2000"]
    sub.write_text("sa_3\nsa_99999\n")
    with pytest.raises(ValueError, match="sa_99999"):
        SA1BSource(str(sa1b), subset_file=str(sub))
    with pytest.raises(ValueError, match="fraction"):
        SA1BSource(str(sa1b), fraction=1.5)


def test_folder_source(tmp_path):
    root = write_image_folder(tmp_path / "my photos", 3, np.random.default_rng(0), size=(20, 30), ext="jpg")
    (root / "sub").mkdir()
    write_image_folder(root / "sub", 1, np.random.default_rng(1))
    src = open_source(SourceSpec(str(root)))
    assert isinstance(src, FolderSource)
    assert src.keys == ["my_photos-img_000", "my_photos-img_001", "my_photos-img_002", "my_photos-sub_img_000"]
    assert src.load(0)[0].shape == (20, 30, 3)
    with pytest.raises(ValueError, match="SA-1B tars only"):
        open_source(SourceSpec(str(root), fraction=0.5))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(SourceSpec(str(tmp_path / "nowhere")))


def test_medical_source_keys_and_valid_region(tmp_path):
    src_dir = synthetic.make("drive", tmp_path / "src")
    out = tmp_path / "shards" / "drive"
    build("drive", src_dir, out.parent, size=64, resize="longest")
    src = open_source(SourceSpec(str(out)))
    assert isinstance(src, MedicalSource)
    assert src.keys == src.dataset.keys() and all(k.startswith("drive-") for k in src.keys)
    image, valid = src.load(0)
    assert image.shape == (64, 64, 3) and valid[0] <= 64 and valid[1] <= 64 and min(valid) < 64
    assert MedicalSource(str(out), "test").keys == src.dataset.keys("test")
    assert src.describe()["manifest_sha256"] == src.dataset.manifest_sha256
    with pytest.raises(ValueError, match="no samples in split"):
        MedicalSource(str(out), "nosuch")
