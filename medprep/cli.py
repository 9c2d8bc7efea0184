"""The ``medprep`` command line: thin typer wrappers over the Python API."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def version() -> None:
    """Print the medprep version."""
    from medprep import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
