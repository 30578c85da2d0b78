"""The training loss as a run logs it: on the global-step axis, the mean over each window of ``log_every_steps``
steps (``train/loss`` and each head's ``train/loss_fine``, ``train/loss_coarse``, with ``lr``), or, when that is 0,
the mean over each epoch; the monitor's values after its epochs. The log callback writes them to dvclive (the
train stage) or anywhere else; only rank 0 has one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from farnet.training.schedule import current_lr

__all__ = ["LossLog"]


class LossLog:
    """The loss window of one run and the callback it is logged to.

    Args:
        log: called with (global steps done, {metric name: value}); None logs nothing (the window is still kept).
        every_steps: the window's length in steps; 0: one mean per epoch.
        optimizer: whose learning rate is logged with each window.
    """

    def __init__(self, log: Callable[[int, dict], None] | None, every_steps: int, optimizer: torch.optim.Optimizer):
        self.log, self.every_steps, self.optimizer = log, every_steps, optimizer
        self._window: dict[str, float] = {}  # loss sums since the last per-step log, and their count "n"

    def add(self, steps_done: int, n: int, values: dict[str, float]) -> None:
        """Add the loss sums of ``n`` steps ending at global step ``steps_done`` to the window; every
        ``every_steps`` steps log its means and the lr (the losses are read at each of those steps, so a window
        holds exactly its steps)."""
        if not self.every_steps:
            return
        w = self._window
        w["n"] = w.get("n", 0) + n
        for key, value in values.items():
            w[key] = w.get(key, 0.0) + value
        if steps_done % self.every_steps == 0:
            count = w.pop("n")
            if self.log is not None:
                self.log(steps_done, {"lr": current_lr(self.optimizer),
                                      **{f"train/{k}": v / count for k, v in w.items()}})
            w.clear()

    def log_epoch(self, steps_done: int, record: dict) -> None:
        """An epoch's history ``record``: its mean losses and lr (when not logged per window) and the monitor's
        values (keys with a "/"), at global step ``steps_done``."""
        if self.log is None:
            return
        logged = {} if self.every_steps else {"lr": record["lr"], **{
            "train/" + k: v for k, v in record.items() if k.startswith("loss")}}
        logged.update({k: v for k, v in record.items() if "/" in k})  # the monitor's values
        if logged:
            self.log(steps_done, logged)
