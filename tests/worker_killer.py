"""A dask worker plugin for tests of worker loss: the worker process SIGKILLs itself when it starts a task whose
first argument's ``repr`` contains ``needle`` - every time, on every worker (the scheduler hands the plugin to the
workers a nanny starts again). Deterministic, unlike a memory limit a fast machine may never reach."""

from __future__ import annotations

import os
import signal
from typing import Any

from dask.distributed import WorkerPlugin


class DieRunning(WorkerPlugin):
    name = "die-running"

    def __init__(self, needle: str):
        self.needle = needle
        self.worker: Any = None

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing":
            return
        args = self.worker.state.tasks[key].run_spec.args
        if args and self.needle in repr(getattr(args[0], "value", args[0])):
            os.kill(os.getpid(), signal.SIGKILL)
