"""The CLI is a thin wrapper over the Python API: same results, user-facing errors, summaries."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medprep.cli import app, parse_size
from medprep.prep import synthetic
from medprep.prep.datasets import registered

runner = CliRunner()


def test_build_verify_and_datasets(tmp_path):
    synthetic.make("drive", tmp_path / "src", n_train=5, n_test=2)
    res = runner.invoke(app, ["build", "--dataset", "drive", "--src", str(tmp_path / "src"), "--out",
                              str(tmp_path / "shards"), "--size", "64", "--shard-samples", "2"])
    assert res.exit_code == 0, res.output
    assert "7 inputs found = 7 samples written + 0 failures" in res.output
    manifest = json.loads((tmp_path / "shards" / "drive" / "manifest.json").read_text())
    assert manifest["params"]["size"] == 64 and manifest["counts"]["splits"] == {"train": 4, "valid": 1, "test": 2}
    res = runner.invoke(app, ["verify", str(tmp_path / "shards" / "drive")])
    assert res.exit_code == 0 and "ok: 4 shards, 7 samples" in res.output
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 0 and "drive" in res.output and "fundus (id 2)" in res.output


def test_build_errors_are_short_and_clear(tmp_path):
    res = runner.invoke(app, ["build", "--dataset", "drive", "--src", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "expected training/images/*_training.tif under" in res.output
    res = runner.invoke(app, ["build", "--dataset", "nope", "--src", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown --dataset 'nope'" in res.output


def test_demo_builds_every_source_domain(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--size", "64"])
    assert res.exit_code == 0, res.output
    for name in registered("source"):
        assert (tmp_path / "shards" / name / "manifest.json").exists()
        assert f"{name}: " in res.output


def test_parse_size():
    assert parse_size("1GB") == 10**9 and parse_size("2GiB") == 2 << 30 and parse_size("500MB") == 5 * 10**8
    assert parse_size("1234") == 1234


# --- one error path ------------------------------------------------------------------------------------------------

def _package_modules() -> list[object]:
    """Every module of the package, imported."""
    import importlib
    import pkgutil

    out = []
    for name in ("manifests", "prep", "prep.datasets", "loaders", "distill", "cli"):
        pkg = importlib.import_module(f"medprep.{name}")
        out.append(pkg)
        out += [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)
                if not m.ispkg and m.name != "__main__"]
    return out


def test_every_error_class_is_a_medprep_error_and_keeps_its_builtin():
    """``except MedprepError`` catches every error medprep raises on purpose; ``except ValueError`` (or the builtin
    each refines) still catches it as before."""
    from medprep.manifests import MedprepError

    classes = {c for m in _package_modules() for c in vars(m).values()
               if isinstance(c, type) and issubclass(c, BaseException) and c.__module__.startswith("medprep.")}
    names = {c.__name__ for c in classes}
    assert {"BuildError", "InputsFailed", "ShardError", "ChunkError", "DamagedStore", "RunSchemaError", "LockBusy",
            "LayoutError", "ArchiveError", "ConversionError", "CacheError", "WorkerLost", "GenerationError",
            "InputRefused", "SampleTooLarge", "NotFound", "MissingDependency", "TeacherError", "ReportError"} <= names
    for c in classes - {MedprepError}:
        assert issubclass(c, MedprepError), f"{c.__module__}.{c.__qualname__} is not a MedprepError"
        builtin = [b for b in c.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
        assert builtin, f"{c.__module__}.{c.__qualname__} refines no builtin error (ValueError, OSError, ...)"
    from medprep.prep import InputsFailed

    assert InputsFailed.exit_status == 1 and MedprepError.exit_status == 2


def _missing_path_commands(tmp_path) -> dict[str, list[str]]:
    """A command line of each command that read a path given to it (each had its own error handling before)."""
    missing = str(tmp_path / "missing")
    return {"info": ["info", missing], "preview": ["preview", missing, "--out", str(tmp_path / "p.png")],
            "leakage": ["leakage", missing], "check-teacher": ["check-teacher", missing],
            "cache-teacher": ["cache-teacher", "--source", missing, "--out", str(tmp_path / "t.zarr"), "--encoder",
                              "random-sam", "--device", "cpu"],
            "build": ["build", "-d", "drive", "--src", missing, "--out", str(tmp_path / "o")]}


def test_every_command_errors_in_one_line_and_debug_shows_the_traceback(tmp_path):
    from medprep.manifests import MedprepError

    for name, args in _missing_path_commands(tmp_path).items():
        res = runner.invoke(app, args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, res.output)
        assert "missing" in lines[0], (name, res.output)
        res = runner.invoke(app, [*args, "--debug"])
        assert isinstance(res.exception, (MedprepError, ValueError, OSError)), (name, res.output, res.exception)
        assert "error: " not in res.output, name


def test_a_bug_is_not_dressed_as_a_user_error(tmp_path, monkeypatch):
    """An error raised by nothing on purpose (here a KeyError inside the card) keeps its traceback."""
    import medprep.manifests.card as card

    def broken(path: str) -> dict:
        return {}["no such key"]

    monkeypatch.setattr(card, "card", broken)
    res = runner.invoke(app, ["info", str(tmp_path)])
    assert isinstance(res.exception, KeyError) and "error: " not in res.output


def test_leakage_report_that_cannot_be_written_is_one_error_after_the_table(tmp_path):
    synthetic.make("drive", tmp_path / "src", n_train=4, n_test=2)
    res = runner.invoke(app, ["build", "-d", "drive", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "b"),
                              "--size", "64"])
    assert res.exit_code == 0, res.output
    (tmp_path / "file").write_text("")
    res = runner.invoke(app, ["leakage", str(tmp_path / "b" / "drive"), "--report", str(tmp_path / "file" / "r.json")])
    assert res.exit_code == 2 and "leakage check:" in res.output, res.output
    assert res.output.strip().splitlines()[-1].startswith(f"error: cannot write the leakage report to {tmp_path}")


# --- converter flags, -o, --version --------------------------------------------------------------------------------

def test_build_flags_are_the_converters_declared_flags():
    """``medprep build``'s dataset-specific flags are those the converters declare (``option(flag="--x")``), each
    helped by the datasets that take it; nothing else is dataset-specific."""
    from medprep.prep.datasets.options import own_flags

    declared = own_flags({n: c.Options for n, c in registered().items()})
    assert {"--images", "--masks", "--modality", "--name", "--groups-file"} <= set(declared)
    assert [d for d, _ in declared["--images"]] == ["folder", "nih-lung"]
    res = runner.invoke(app, ["build", "--help"], terminal_width=200)
    assert res.exit_code == 0
    for flag, takers in declared.items():
        line = next(x for x in res.output.splitlines() if x.strip().startswith(f"{flag} "))
        assert all(f"{dataset}: " in line for dataset, _ in takers), line


def test_a_converter_flag_goes_to_its_option_and_only_where_it_is_declared(tmp_path):
    src = synthetic.make("drive", tmp_path / "src", n_train=2, n_test=1)
    res = runner.invoke(app, ["build", "-d", "drive", "--src", str(src), "--out", str(tmp_path / "o"),
                              "--images", "x/*.png"])
    assert res.exit_code == 2 and "--dataset drive does not take images" in res.output, res.output
    res = runner.invoke(app, ["build", "-d", "folder", "--src", str(src), "--out", str(tmp_path / "o"),
                              "--images", "x/*.png", "--masks", "{stem}.png", "--modality", "fundus", "--name", "../x"])
    assert res.exit_code == 2 and "--name: expected 1 to 64 lower-case letters" in res.output, res.output


def test_own_flags_spell_their_option():
    from dataclasses import dataclass

    import pytest

    from medprep.prep.datasets import option
    from medprep.prep.datasets.options import own_flags

    @dataclass(frozen=True)
    class Options:
        image_glob: str = option("*", help="images", flag="--images")

    with pytest.raises(ValueError, match="an option's own flag spells its name, --image-glob"):
        own_flags({"x": Options})


def test_option_texts_are_read_once_by_the_declared_types(tmp_path):
    """``-o`` values reach the converter's declaration as text and are recorded as the types it reads: the same
    parameters as the typed Python call."""
    from medprep.cli.parse import key_values
    from medprep.prep import BuildParams

    texts = key_values(["modality=ct", "window-level=40", "dicom=true", 'label_windows={"2": "bone"}',
                        "multilabel=each"], "--option")
    assert texts == {"modality": "ct", "window_level": "40", "dicom": "true", "label_windows": '{"2": "bone"}',
                     "multilabel": "each"}
    from_text = BuildParams.of("volumes", options=texts)
    typed = BuildParams.of("volumes", modality="ct", window_level=40.0, dicom=True, label_windows={"2": "bone"},
                           multilabel="each")
    assert from_text == typed and from_text.recorded(None) == typed.recorded(None)
    assert from_text.options["window_level"] == 40.0 and from_text.options["dicom"] is True


def test_version_is_an_option_not_a_command():
    from medprep import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"medprep {__version__}"
    res = runner.invoke(app, ["version"])
    assert res.exit_code == 2 and "No such command 'version'" in res.output


def test_a_checkpoint_that_is_not_one_is_an_error_line(tmp_path):
    src = synthetic.make("drive", tmp_path / "src", n_train=2, n_test=1)
    res = runner.invoke(app, ["build", "-d", "drive", "--src", str(src), "--out", str(tmp_path / "b"), "--size", "64"])
    assert res.exit_code == 0, res.output
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    res = runner.invoke(app, ["cache-teacher", "--source", str(tmp_path / "b" / "drive"), "--out",
                              str(tmp_path / "t.zarr"), "--encoder", "litemedsam", "--checkpoint",
                              str(tmp_path / "garbage.pth"), "--device", "cpu", "-q"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1].startswith(f"error: checkpoint {tmp_path / 'garbage.pth'} cannot be "
                                                          f"read as a torch checkpoint"), res.output
