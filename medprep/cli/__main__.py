"""``python -m medprep.cli``: the ``medprep`` command."""

from medprep.cli import app

app()
