"""The project's own error types.

Every problem with user input (a config key, an image, an annotation file, a checkpoint) is raised as a
subclass of :class:`FarnetError`, with the offending path (and line, for text files) in the message, so a
researcher can go straight to the bad file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

DEBUG_VARIABLE = "FARNET_DEBUG"  # set (not "0") to see the traceback of a FarnetError a command reports


class FarnetError(Exception):
    """Base class of every error this project raises on bad input."""

    exit_code = 2  # what a command ends with on this error (argparse's code for a usage error)


class ConfigError(FarnetError, ValueError):
    """A params file has an unknown key, a wrong type or a bad value."""


class DataError(FarnetError, ValueError):
    """A data file is missing, unreadable or malformed.

    Args:
        path: the offending file.
        message: what is wrong with it.
        line: 1-based line number in a text file, when the problem is on one line.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


class TrainingDiverged(FarnetError, RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(FarnetError):
    """SIGINT or SIGTERM stopped training after a step; a resumable checkpoint was written.

    Args:
        message: what happened and where the checkpoint is.
        signum: the signal that stopped the run.
        result: the progress so far (the engine's ``TrainResult``), for a caller that still writes a model from
            the weights in memory; None when unknown.
    """

    def __init__(self, message: str, signum: int, result: object | None = None):
        self.signum = signum
        self.result = result
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class WriteError(FarnetError, OSError):
    """An output file could not be written (a full disk, no permission); nothing half-written is left."""

    def __init__(self, path: str | Path, message: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


def run_command(prog: str, main: Callable[[], int | None]) -> int:
    """Run a command's ``main`` and return its exit status; a :class:`FarnetError` (a bad config key, data file
    or output path) is one line on stderr, ``<prog>: error: <message>``, and its :attr:`~FarnetError.exit_code`,
    without a traceback (the message names the file and key) unless ``FARNET_DEBUG`` is set.

    The stage scripts (``pipelines/*.py``) run through it; ``farnet`` (farnet/cli.py) prints the same line.
    """
    try:
        return int(main() or 0)
    except FarnetError as exc:
        if os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
