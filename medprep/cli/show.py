"""Commands that look at what was made: ``verify`` (a built dataset), ``info`` (its card, or a teacher store's),
``preview`` (a contact sheet)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .group import app


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

    c = card(path)
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

    sheet = draw_sheet(path, out, n=n, split=split, seed=seed, run=run, tile=tile)
    typer.echo(sheet.summary())
