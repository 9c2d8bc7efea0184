"""A CLI that helps: progress people can follow (a bar on a terminal, plain lines in a pipe), suggestions for the
common mistakes, clean help, one meaning per option name, recipes that rebuild the same bytes, dataset sources."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medprep import __version__
from medprep.cli import app
from medprep.prep import BuildParams, TaskDone, build, synthetic

runner = CliRunner()
CLI = [sys.executable, "-m", "medprep.cli"]
COMMANDS = sorted(typer.main.get_command(app).commands)


def invoke(*args: object) -> tuple[int, str]:
    """Exit status and everything printed (stdout and stderr)."""
    res = runner.invoke(app, [str(a) for a in args], prog_name="medprep")
    return res.exit_code, res.output


def invoke_json(*args: object) -> object:
    """The JSON a command printed on stdout (``--json``)."""
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def drive80(tmp_path_factory) -> Path:
    """A fake DRIVE of 80 images (train 48, valid 12, test 20): enough work for progress to show in between."""
    return synthetic.make("drive", tmp_path_factory.mktemp("drive80"), n_train=60, n_test=20)


# --- progress ------------------------------------------------------------------------------------------------------

def run_in_pty(args: list[str], timeout: float = 120) -> str:
    """Run a command with a pseudo-terminal as its stdout and stderr; everything it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal 120 columns wide
        os.environ.update(COLUMNS="120", LINES="40", TERM="xterm-256color")
        os.execv(args[0], args)
    out, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    os.waitpid(pid, 0)
    return out.decode(errors="replace")


def test_build_on_a_terminal_draws_a_bar_that_counts_samples(drive80, tmp_path):
    """One task per split (--shard-samples 1000): a bar that moved by shards would only show 0, 48, 60 and 80."""
    # --size 1024: the build lasts seconds, so the bar redraws many times even on a much faster machine
    text = run_in_pty([*CLI, "build", "-d", "drive", "--src", str(drive80), "--out", str(tmp_path), "--size", "1024",
                       "--shard-samples", "1000"])
    assert "80 inputs found = 80 samples written" in text, text[-2000:]
    counts = {int(n) for n in re.findall(r"(\d+)/80\b", text)}
    assert counts >= {80} and "━" in text and "samples/s" in text
    assert len(counts - {0, 48, 60, 80}) >= 2, f"the bar did not move by samples: {sorted(counts)}"


def test_piped_build_prints_progress_lines_and_final_counts(drive80, tmp_path):
    # --size 1024: the build lasts seconds, so 0.05 s lines come many times even on a much faster machine
    res = subprocess.run([*CLI, "build", "-d", "drive", "--src", str(drive80), "--out", str(tmp_path), "--size",
                          "1024", "--progress-every", "0.05"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("build drive: ")]
    assert len(lines) >= 3, res.stderr
    assert all(re.fullmatch(r"build drive: \d+/80 samples \(\d+%\), .*failures", x) for x in lines), lines
    assert "80/80 samples (100%)" in lines[-1] and "elapsed" in lines[-1]
    assert "\x1b[" not in res.stderr  # no terminal codes in a pipe
    assert "80 inputs found = 80 samples written + 0 failures" in res.stdout
    assert re.search(r"3 shards, [\d.]+ MB in ", res.stdout) and "samples/s" in res.stdout
    again = subprocess.run([*CLI, "build", "-d", "drive", "--src", str(drive80), "--out", str(tmp_path), "--size",
                            "1024", "--progress-every", "0.05"], capture_output=True, text=True, timeout=300)
    assert "drive: up to date, nothing written (80 samples already built)" in again.stdout
    assert "samples written" not in again.stdout and "samples/s" not in again.stdout and not again.stderr


def test_dask_build_is_quiet_but_for_its_progress(tmp_path):
    src = synthetic.make("dsb2018", tmp_path / "src", n=8)
    res = subprocess.run([*CLI, "build", "-d", "dsb2018", "--src", str(src), "--out", str(tmp_path / "out"), "--size",
                          "64", "--shard-samples", "2", "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [x for x in res.stderr.splitlines() if x.startswith("build dsb2018: ")]
    assert "8/8 samples" in res.stderr.splitlines()[-1]
    quiet = subprocess.run([*CLI, "build", "-d", "dsb2018", "--src", str(src), "--out", str(tmp_path / "q"),
                            "--size", "64", "--workers", "2", "--quiet"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stdout == quiet.stderr == ""


def test_resumed_samples_are_shown_apart_and_not_counted_in_the_rate(tmp_path):
    src = synthetic.make("dsb2018", tmp_path / "src", n=10)

    def crash(event: object) -> None:
        if isinstance(event, TaskDone):
            raise KeyboardInterrupt  # an interrupted build after its first task

    with pytest.raises(KeyboardInterrupt):
        build("dsb2018", src, tmp_path, size=64, shard_samples=4, on_event=crash)
    doc = invoke_json("build", "-d", "dsb2018", "--src", src, "--out", tmp_path, "--size", 64, "--shard-samples", 4,
                      "--json")
    assert doc["resumed_samples"] == 4 and doc["samples"] == 10
    assert doc["samples_per_second"] == pytest.approx(6 / doc["seconds"], rel=0.05)


# --- mistakes, each with its suggestion ----------------------------------------------------------------------------

def test_dataset_name_is_case_folded_and_misspellings_get_a_suggestion(tmp_path):
    src = synthetic.make("drive", tmp_path / "src", n_train=2, n_test=1)
    code, out = invoke("build", "--dataset", "DRIVE", "--src", src, "--out", tmp_path / "o", "--size", 64)
    assert code == 0 and (tmp_path / "o" / "drive" / "manifest.json").exists(), out
    code, out = invoke("build", "--dataset", "drvie", "--src", src, "--out", tmp_path / "o", "--size", 64)
    assert code == 2 and "unknown --dataset 'drvie'; did you mean drive?" in out
    code, out = invoke("datasets", "Kvasir_SEG")
    assert code == 0 and out.startswith("kvasir-seg: ")


def test_a_folder_inside_the_dataset_asks_for_its_parent(tmp_path):
    src = synthetic.make("drive", tmp_path / "src", n_train=2, n_test=1)
    code, out = invoke("build", "--dataset", "drive", "--src", src / "training", "--out", tmp_path / "o")
    assert code == 2 and "looks like a folder inside the download (training/" in out
    assert f"pass the parent folder, --src {src}" in " ".join(out.split())


def test_another_datasets_folder_is_recognised(tmp_path):
    src = synthetic.make("kvasir-seg", tmp_path / "src", n=3)
    code, out = invoke("build", "--dataset", "drive", "--src", src, "--out", tmp_path / "o")
    assert code == 2 and "this looks like kvasir-seg" in out and "pass --dataset kvasir-seg" in out


def test_group_by_without_a_table_names_the_groups_file_and_its_columns(tmp_path):
    src = synthetic.make("cvc-clinicdb", tmp_path / "src", n=12)  # the original download: no metadata.csv
    code, out = invoke("build", "--dataset", "cvc-clinicdb", "--src", src, "--out", tmp_path / "o", "--group-by",
                       "sequence")
    flat = " ".join(out.split())
    assert code == 2 and "pass --groups-file FILE" in flat and "a frame column and a sequence column" in flat


def test_an_image_without_mask_names_the_expected_mask(tmp_path):
    src = synthetic.make("shenzhen", tmp_path / "src", n=4, unmasked=1)
    result = build("shenzhen", src, tmp_path / "o", size=64)
    assert [f["reason"] for f in result.failures] == [
        "image without mask: expected mask/CHNCXR_0004_1_mask.png"]  # below the dataset folder, where it belongs
    assert f"failures listed in {result.out / 'failures.jsonl'}" in result.summary()


def test_split_file_ids_are_documented_and_never_reported_on_both_sides(tmp_path):
    code, out = invoke("datasets", "udiat")
    assert code == 0 and "ultra_000001 (source id 000001)" in out
    src = synthetic.make("udiat", tmp_path / "src", n=6)
    split = tmp_path / "mine.json"  # a hand-made file naming the samples by their source ids
    split.write_text(json.dumps({"train": ["000001", "000002", "000003"], "valid": ["000004"],
                                 "test": ["000005", "ultra_000006", "000007"]}))
    result = build("udiat", src, tmp_path / "o", size=64, split_file=split)
    rep = result.manifest.split_report
    assert rep["matched"] == 6 and rep["in_file_not_found"] == ["000007"] and rep["found_not_in_file"] == []


@pytest.mark.parametrize("args, message", [
    (["--patch-sizes", "16,x"], "--patch-sizes '16,x': expected comma-separated whole numbers"),
    (["--shard-bytes", "12XB"], "--shard-bytes"),
    (["--size", "7"], "--size 7: expected"),
])
def test_option_errors_name_the_option(tmp_path, args, message):
    src = synthetic.make("drive", tmp_path / "src", n_train=2, n_test=1)
    code, out = invoke("build", "--dataset", "drive", "--src", src, "--out", tmp_path / "o", *args)
    assert code == 2 and message in out, out


# --- help, version, option names -----------------------------------------------------------------------------------

def test_version_and_short_help():
    for flag in ("--version", "-V"):
        code, out = invoke(flag)
        assert code == 0 and out.strip() == f"medprep {__version__}"
    code, out = invoke("-h")
    assert code == 0 and "Usage: medprep" in out and "build" in out and "datasets" in out
    code, out = invoke("build", "-h")
    assert code == 0 and "--config RECIPE.toml" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_clean(command):
    code, out = invoke(command, "--help")
    assert code == 0, out
    for junk in ("``", ":class:", ":func:", "<bool>", "<str>", "<int>", "<float>", "<path>", "<list", "\x1b["):
        assert junk not in out, f"{command} --help shows {junk!r}:\n{out}"


def test_one_meaning_per_option_name():
    """--workers: processes (build, leakage), --shard-bytes: bytes, --json: print JSON; the cache's threads and
    samples per shard have their own names, as has the leakage report file."""
    group = typer.main.get_command(app)
    opts = {name: {o for p in cmd.params for o in p.opts} for name, cmd in group.commands.items()}
    assert {"--workers", "--shard-bytes", "--shard-samples", "--json"} <= opts["build"]
    assert "--workers" not in opts["cache-teacher"] and "--shard-bytes" not in opts["cache-teacher"]
    assert {"--decode-threads", "--shard-samples"} <= opts["cache-teacher"]
    assert "--threads" not in opts["leakage"] and "--json" not in opts["leakage"]
    assert {"--workers", "--report"} <= opts["leakage"]
    assert all("--json" in opts[c] for c in ("build", "verify", "datasets", "info"))


# --- recipes -------------------------------------------------------------------------------------------------------

def test_every_build_parameter_is_a_recipe_key():
    build_opts = {p.name for p in typer.main.get_command(app).commands["build"].params}
    assert {f.name for f in fields(BuildParams)} - {"options"} <= build_opts


def test_recipe_round_trip_gives_identical_bytes(tmp_path):
    src = synthetic.make("stare", tmp_path / "src", n=8, labelled=8)
    code, out = invoke("build", "-d", "stare", "--src", src, "--out", tmp_path / "a", "--size", 64, "--seed", 3,
                       "--shard-samples", 2, "--modality-map", "esp-medsam", "-o", "annotator=vk")
    assert code == 0, out
    built = tmp_path / "a" / "stare"
    recipe = built / "recipe.toml"
    assert 'annotator = "vk"' in recipe.read_text() and str(tmp_path) not in recipe.read_text().split("src =")[0]
    code, out = invoke("build", "--config", recipe, "--out", tmp_path / "b")
    assert code == 0, out
    again = tmp_path / "b" / "stare"
    names = sorted(p.name for p in built.iterdir() if p.suffix in (".tar", ".jsonl") or p.name == "manifest.json")
    assert len([n for n in names if n.endswith(".tar")]) >= 3
    assert all((built / n).read_bytes() == (again / n).read_bytes() for n in names)
    assert (again / "recipe.toml").read_bytes() == recipe.read_bytes()
    code, out = invoke("build", "--config", recipe)  # out = ".." of the recipe: the build it came from
    assert code == 0 and "stare: up to date, nothing written" in out
    code, out = invoke("build", "--config", recipe, "--out", tmp_path / "c", "--size", 128)  # given options win
    assert code == 0 and json.loads((tmp_path / "c" / "stare" / "manifest.json").read_text())["params"]["size"] == 128


def test_hand_written_recipe_and_its_mistakes(tmp_path):
    synthetic.make("folder", tmp_path / "src")  # -> src/folder
    recipe = tmp_path / "r.toml"
    recipe.write_text('dataset = "folder"\nsrc = "src/folder"\nout = "built"\nsize = 64\n'
                      'images = "imgs/*/*.png"\nmasks = "labels/{parent}/{stem}_mask.png"\n'
                      '[options]\nmodality = "dermoscopy"\nname = "mine"\n')
    code, out = invoke("build", "--config", recipe)
    assert code == 0 and (tmp_path / "built" / "mine" / "manifest.json").exists(), out
    recipe.write_text('dataset = "drive"\nsizes = 64\n')
    code, out = invoke("build", "--config", recipe)
    assert code == 2 and "unknown key(s) sizes" in out and "patch-sizes" in out
    recipe.write_text('dataset = "drive\n')
    code, out = invoke("build", "--config", recipe)
    assert code == 2 and "cannot read it as a TOML recipe" in out


def test_recipe_written_before_the_shard_bytes_rename(tmp_path):
    """A recipe.toml of a build made before ``shard-size`` became ``shard-bytes`` builds the same; both keys in one
    recipe are refused, and the old flag is named as unknown with the new one offered."""
    synthetic.make("folder", tmp_path / "src")  # -> src/folder
    recipe = tmp_path / "r.toml"
    head = ('dataset = "folder"\nsrc = "src/folder"\nout = "built"\nsize = 64\n'
            'images = "imgs/*/*.png"\nmasks = "labels/{parent}/{stem}_mask.png"\n')
    options = '[options]\nmodality = "dermoscopy"\nname = "mine"\n'
    recipe.write_text(head + "shard-size = 5000000\n" + options)
    code, out = invoke("build", "--config", recipe)
    assert code == 0, out
    assert json.loads((tmp_path / "built" / "mine" / "manifest.json").read_text())["params"]["shard_bytes"] == 5_000_000
    recipe.write_text(head + "shard-size = 5000000\nshard-bytes = 5000000\n" + options)
    code, out = invoke("build", "--config", recipe)
    assert code == 2 and "'shard-size' (the old name) and 'shard-bytes' are one option" in " ".join(out.split())
    code, out = invoke("build", "-d", "drive", "--src", tmp_path, "--out", tmp_path / "x", "--shard-size", "1GB")
    assert code == 2 and "No such option: --shard-size" in out and "--shard-bytes" in out, out


# --- datasets ------------------------------------------------------------------------------------------------------

def test_datasets_name_their_source_layout_ids_and_build_command():
    code, out = invoke("datasets", "drive")
    flat = " ".join(out.split())
    assert code == 0 and "official page: https://drive.grand-challenge.org/" in flat
    assert "licence:" in flat and "cite: Staal J" in flat and "layout: training/images/NN_training.tif" in flat
    assert "split-file ids: 01_test, 02_test" in flat
    assert "build: medprep build --dataset drive --src DOWNLOAD --out shards/" in flat
    code, out = invoke("datasets", "folder")
    assert "--images IMAGES --masks MASKS --modality MODALITY --name NAME" in " ".join(out.split())
    doc = invoke_json("datasets", "isic2018", "--json")
    assert doc["homepage"] == "https://challenge.isic-archive.com/data/#2018" and doc["license"] == "CC BY-NC 4.0"
    assert doc["split_file_ids"][0]["split_file_id"].startswith("ISIC_")
    code, out = invoke("datasets")
    assert code == 0 and "https://datasets.simula.no/kvasir-seg/" in out


def test_build_json(tmp_path):
    src = synthetic.make("drive", tmp_path / "src", n_train=2, n_test=1)
    doc = invoke_json("build", "-d", "drive", "--src", src, "--out", tmp_path, "--size", 64, "--json")
    assert doc["samples"] == 3 and doc["bytes"] > 0 and doc["up_to_date"] is False
    assert doc["out"] == str(tmp_path / "drive") and doc["failures_file"] is None
