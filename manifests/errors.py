"""The one base of the errors medprep raises on purpose.

``MedprepError``: bad input, parameters, files or environment, said in the user's terms (what was expected where,
what was found, what to do). Every error class of the package derives from it and from the builtin error it refines
(``class ShardError(MedprepError, ValueError)``), so ``except ValueError`` keeps working and ``except MedprepError``
catches them all. The command line shows one as a single ``error: ...`` line and exits with its ``exit_status``.
"""

from __future__ import annotations


class MedprepError(Exception):
    """An error medprep raises on purpose; its message is the whole story (no traceback needed)."""

    #: the command line's exit status (2: the command could not do its work; 1 is kept for a finished check or
    #: build whose verdict is "no", e.g. inputs that failed)
    exit_status = 2

    def __str__(self) -> str:
        # the message as given (KeyError would show its repr, quotes included)
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class NotFound(MedprepError, KeyError):
    """A run, view or sample the caller named is not there; the message says what is."""


class MissingDependency(MedprepError, ImportError):
    """An optional package a requested feature needs is not installed; the message says what to install."""


__all__ = ["MedprepError", "MissingDependency", "NotFound"]
