"""The learning-rate schedule of a run, and the run's schedule itself: the options' epochs and lr milestones, or
a shorter schedule with the milestones at the same fractions when a budget asks for one (:class:`Schedule`).

The step schedule is the authors' code (Adam, lr ×0.1 at epoch 200 of 300, docs/design.md §4); ``cosine`` decays
per step to 0; a linear warm-up multiplies either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from farnet.training.options import TrainOptions

__all__ = ["Schedule", "current_lr", "lr_at", "scheduled_lr", "shortened_schedule"]


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first group's learning rate as a number (a device tensor on the graph step path)."""
    return float(optimizer.param_groups[0]["lr"])


def lr_at(epoch: int, lr: float, milestones: Sequence[int], gamma: float) -> float:
    """Step schedule: lr · gamma^(number of milestones <= epoch), epochs 0-based."""
    return lr * gamma ** sum(1 for m in milestones if epoch >= m)


def scheduled_lr(options: TrainOptions, epoch: int, step: int, total_steps: int) -> float:
    """The learning rate of 0-based global ``step`` (in 0-based ``epoch``) of a ``total_steps`` run.

    "step": :func:`lr_at` (the authors' code); "cosine": lr · ½(1 + cos(π·t)), t going from 0 after the warm-up
    to 1 at the last step. A linear warm-up over the first ``warmup_steps`` multiplies either.

    Raises:
        ValueError: naming an ``lr_schedule`` that is neither.
    """
    if options.lr_schedule == "cosine":
        t = (step - options.warmup_steps) / max(1, total_steps - options.warmup_steps)
        lr = 0.5 * options.lr * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
    elif options.lr_schedule == "step":
        lr = lr_at(epoch, options.lr, options.lr_milestones, options.lr_gamma)
    else:
        raise ValueError(f"lr_schedule {options.lr_schedule!r} is not one of 'step', 'cosine'")
    if step < options.warmup_steps:
        lr *= (step + 1) / options.warmup_steps
    return lr


def shortened_schedule(epochs: int, milestones: Sequence[int], new_epochs: int) -> tuple[int, tuple[int, ...]]:
    """A schedule of ``new_epochs`` (clamped to 1..``epochs``) with each lr milestone at the same fraction of it.

    The paper's drop at epoch 200 of 300 moves to 2/3 of the shorter run; a milestone that would fall on or after
    its end is dropped.

    Returns:
        (epochs, milestones) of the shorter schedule; the given one when ``new_epochs >= epochs``.
    """
    new_epochs = max(1, min(epochs, new_epochs))
    if new_epochs == epochs:
        return epochs, tuple(milestones)
    moved = sorted({max(1, round(m * new_epochs / epochs)) for m in milestones})
    return new_epochs, tuple(m for m in moved if m < new_epochs)


@dataclass
class Schedule:
    """The schedule a run trains: its options (replaced by a shorter schedule when a budget asks for one) and
    the steps of one epoch.

    Attributes:
        options: the run's options; only ``epochs`` and ``lr_milestones`` ever change.
        steps_per_epoch: of this process (:func:`farnet.training.engine.steps_per_epoch`).
        planned_epochs: the options' epochs, before any budget.
        reduced_by: why the schedule was shortened ("time budget", "step limit"), None while it is the options'.
    """

    options: TrainOptions
    steps_per_epoch: int
    planned_epochs: int = field(init=False)
    reduced_by: str | None = None

    def __post_init__(self) -> None:
        self.planned_epochs = self.options.epochs

    @property
    def epochs(self) -> int:
        return self.options.epochs

    @property
    def total_steps(self) -> int:
        return self.options.epochs * self.steps_per_epoch

    def lr(self, epoch: int, global_step: int) -> float:
        """The learning rate of 0-based ``global_step`` in 0-based ``epoch`` (:func:`scheduled_lr`)."""
        return scheduled_lr(self.options, epoch, global_step, self.total_steps)

    def shorten(self, epochs: int, reason: str) -> None:
        """Train ``epochs`` instead, the lr milestones at the same fractions (:func:`shortened_schedule`)."""
        # deviation: (budgeted runs only) fewer epochs than the schedule asked for (the paper's 300), the lr drop
        # at the same fraction of the shorter run; train_info.json's `schedule` and the provenance say so
        o = self.options
        new_epochs, milestones = shortened_schedule(o.epochs, o.lr_milestones, epochs)
        if (new_epochs, milestones) == (o.epochs, tuple(o.lr_milestones)):
            return
        self.options = replace(o, epochs=new_epochs, lr_milestones=milestones)
        self.reduced_by = reason

    def saved(self) -> dict | None:
        """The shortened schedule, as a checkpoint keeps it (None: the options' own)."""
        if self.reduced_by is None:
            return None
        return {"epochs": self.options.epochs, "lr_milestones": list(self.options.lr_milestones),
                "reduced_by": self.reduced_by}

    def restore(self, saved: dict) -> None:
        """Train the shortened schedule a checkpoint kept (:meth:`saved`): it is the run's own from then on."""
        self.shorten(saved["epochs"], saved["reduced_by"])
