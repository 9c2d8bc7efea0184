"""The command group every command module registers into, ``--version``, and the one handler of user-facing errors."""

from __future__ import annotations

import re

import click
import typer
from typer.core import TyperArgument, TyperGroup

from medprep import __version__
from medprep.manifests.errors import MedprepError

DEBUG = "--debug"


class _Commands(TyperGroup):
    """The command group, with the one handler of user-facing errors: a ``MedprepError`` (and a ``ValueError`` or
    ``OSError`` of validation, an object-store client's error) ends in one ``error: ...`` line and its exit status
    (2; 1 for a build whose inputs failed); ``--debug`` anywhere on the command line shows the traceback instead."""

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
            code = _exit_status(e)
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


def _exit_status(e: Exception) -> int | None:
    """The exit status of a user-facing error (None: a bug, shown with its traceback)."""
    if isinstance(e, MedprepError):
        return e.exit_status
    return 2 if isinstance(e, (ValueError, OSError)) or _object_store_error(e) else None


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
