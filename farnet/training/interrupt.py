"""Graceful interruption of training: SIGINT (Ctrl-C) or SIGTERM (a scheduler, ``kill``, ``torchrun``) asks the
run to stop after the current optimizer step instead of killing it mid-write.

:class:`StopOnSignal` installs handlers that only set a flag, and restores the previous handlers on exit. The
training engine polls :func:`stop_requested` after optimizer steps (:func:`stop_check_due` says which); when it
is set, the engine writes a checkpoint recording the epoch in progress and the steps done in it, and raises
:class:`~farnet.core.errors.TrainingInterrupted`. Running the same command again resumes from that step (the data
order of an epoch is fixed by its seed), so an interrupted run ends with the same weights as an uninterrupted
one. A second signal while the first is pending ends the run at once, for a user who cannot wait for the step
to finish: a second SIGINT raises :class:`KeyboardInterrupt` (Python's exit status for Ctrl-C), any other signal
raises ``SystemExit(128 + signum)``, the shell's status for a process that signal ended (143 for SIGTERM), so a
scheduler sees why the job ended; ``finally`` blocks still run on the way out.

In a data-parallel run the ranks must agree to stop, which costs an all-reduce and a host synchronisation; so
there the flag is checked only every :data:`STOP_CHECK_EVERY` steps and at each epoch's end
(:func:`stop_check_due`), on the same steps on every rank. One process checks it after every step.

Signal handlers can only be installed from the main thread; elsewhere :class:`StopOnSignal` does nothing and
signals keep their usual effect.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from farnet.training import distributed

__all__ = ["STOP_CHECK_EVERY", "StopOnSignal", "stop_check_due", "stop_on_signal", "stop_requested",
           "requested_signal"]

#: in a data-parallel run, the steps between two checks of the stop flag (each one an all-reduce and a host
#: synchronisation); a signal then stops the run at most this many steps later
STOP_CHECK_EVERY = 10

_pending: list[int] = []  # signals received while a StopOnSignal is active, oldest first
_depth = 0  # nesting depth of active StopOnSignal contexts

F = TypeVar("F", bound=Callable)


class StopOnSignal:
    """Context manager: while active, the given signals set the stop flag instead of ending the process.

    Args:
        signals: the signals to catch (default SIGINT and SIGTERM).

    Nested contexts share one flag; the flag is cleared when the outermost one is entered and exited. A signal
    that arrived but was never acted on (the block ended normally after it) is raised again on exit, so the
    previous handler still sees it.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = tuple(signals)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        global _depth
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be set from the main thread
        if _depth == 0:
            _pending.clear()
        _depth += 1
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, _handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        global _depth
        if not self._previous:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        _depth -= 1
        if _depth == 0:
            unanswered = _pending[0] if _pending and exc_type is None else None
            _pending.clear()
            if unanswered is not None:  # arrived after the last check: deliver it now, to the old handler
                signal.raise_signal(unanswered)

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for while this context was active."""
        return bool(_pending)


def _handle(signum: int, frame) -> None:
    if _pending:  # a second signal: the user does not want to wait for the step to finish
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            raise KeyboardInterrupt(f"second signal {name} while stopping")
        os.write(2, f"second signal {name} while stopping: exiting now\n".encode())  # print() is not reentrant
        raise SystemExit(128 + signum)
    _pending.append(signum)


def stop_on_signal(func: F) -> F:
    """Decorator: run ``func`` inside :class:`StopOnSignal` (SIGINT and SIGTERM)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with StopOnSignal():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def requested_signal() -> int | None:
    """The first signal received in the active context, or None."""
    return _pending[0] if _pending else None


def stop_requested(device: torch.device | str | None = None, world_size: int = 1) -> bool:
    """Whether training should stop now.

    In a distributed run every rank must stop after the same step, or the next collective would hang, so with
    ``world_size > 1`` the ranks agree by an all-reduce (MAX) of their flags on ``device``.
    """
    flag = bool(_pending)
    if world_size > 1 and distributed.is_distributed():
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        flag = bool(tensor.item())
    return flag


def stop_check_due(steps_done: int, epoch_end: bool, world_size: int = 1) -> bool:
    """Whether the engine checks the stop flag (:func:`stop_requested`) after ``steps_done`` global steps.

    One process checks after every step (it costs nothing). Data-parallel ranks check every
    :data:`STOP_CHECK_EVERY` steps and after each epoch's last step: every rank has done the same steps, so all
    of them take part in the same all-reduces.
    """
    return world_size <= 1 or epoch_end or steps_done % STOP_CHECK_EVERY == 0
