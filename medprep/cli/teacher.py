"""Teacher features and the demo: ``cache-teacher`` (a zarr store of frozen-teacher features), ``check-teacher``
(recompute and compare), ``demo`` (fake downloads built and cached)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .group import app
from .logs import setup_logging
from .parse import json_values


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
    codec: Optional[str] = typer.Option(None, metavar="CODEC", help="Chunk compression: none (default: the "
                                                                   "fastest reads), blosc-lz4 or zstd-1, zstd-3 "
                                                                   "(fewer bytes: the padding); a resumed run keeps "
                                                                   "its own."),
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
        urls = [u for value in source for u in value.split(",") if u]
        params = per_source(
            encoder, source_specs(urls, source_kind, split, fraction, seed, subset_file), out, run=run,
            checkpoint=checkpoint, encoder_kwargs=json_values(encoder_arg, "--encoder-arg"),
            normalize=normalize, resize=resize, dtype=dtype, codec=codec, views=tuple(views.split(",")),
            shard_samples=shard_samples, keep_padding=keep_padding, batch_size=batch_size, autocast=autocast,
            compile=compile, attention=attention, threads=threads)
        execution = CacheExecution(device=device, devices=tuple(devices.split(",")) if devices else (),
                                   scheduler=scheduler, decode_threads=decode_threads, wait=wait,
                                   max_failures=max_failures)
        results = cache_corpus(params, on_event=draw, execution=execution)
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

    report = run_check(store, run, samples, seed=seed, device=device, checkpoint=checkpoint, source=source,
                       encoder=encoder)
    typer.echo(json.dumps(report.to_json(), indent=1) if json_out else report.summary())
    if not report.ok(min_cosine, min_dice):
        raise typer.Exit(1)
