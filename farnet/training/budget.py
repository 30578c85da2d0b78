"""Limits on one training session: a run that must end in time (``farnet replicate``), or a tiny test run.

A :class:`TrainBudget` bounds a session by wall time or steps; its :class:`BudgetClock` watches the run. A step
limit shortens the schedule at once to the fewest whole epochs holding it. A time budget first times a probe of
``probe_steps`` steps, then fits the schedule to the time left (:meth:`Schedule.shorten
<farnet.training.schedule.Schedule.shorten>`); past its seconds the run stops after the current step whatever
the schedule. A run a budget stops returns normally, so the caller writes its model as for any run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from farnet.training.schedule import Schedule

__all__ = ["BudgetClock", "TrainBudget"]


@dataclass(frozen=True)
class TrainBudget:
    """Limits on one training session.

    Attributes:
        seconds: wall time the session may train. After ``probe_steps`` steps the engine times its steps and,
            when the rest of the schedule does not fit, trains the largest whole-epoch schedule that does
            (:func:`~farnet.training.schedule.shortened_schedule`); past ``seconds`` it stops after the current
            step whatever the schedule.
        max_steps: stop after this many steps in all; the schedule becomes the fewest whole epochs holding them.
        probe_steps: the steps of the probe; its first half is a warm-up (cuDNN autotuning, allocator growth)
            and only the second half is timed.
        margin: the share of the remaining time the fitted schedule may fill (the rest absorbs the epochs' ends
            and a slower step later on).
    """

    seconds: float | None = None
    max_steps: int | None = None
    probe_steps: int = 300
    margin: float = 0.95

    def __post_init__(self) -> None:
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"budget seconds must be > 0, got {self.seconds!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"budget max_steps must be >= 1, got {self.max_steps!r}")
        if self.probe_steps < 2:
            raise ValueError(f"budget probe_steps must be >= 2, got {self.probe_steps!r}")
        if not 0 < self.margin <= 1:
            raise ValueError(f"budget margin must be in (0, 1], got {self.margin!r}")


class BudgetClock:
    """The clock of one session under ``budget`` (None: no limits); it starts when it is made.

    Args:
        budget: the session's limits, or None.

    Attributes:
        first_step: global steps done when the session began (set by the engine once it has resumed).
        step_s: the step time the probe measured, None until it has.
    """

    def __init__(self, budget: TrainBudget | None):
        self.budget = budget
        self.started = time.perf_counter()  # the setup (building the model's path, resuming) counts too
        self.first_step = 0
        self.step_s: float | None = None
        self._probe_t0: float | None = None  # when the timed half of the probe began

    def limit_steps(self, schedule: Schedule) -> None:
        """Shorten ``schedule`` to the fewest whole epochs that hold the budget's ``max_steps`` (if any)."""
        if self.budget is not None and self.budget.max_steps is not None:
            schedule.shorten(math.ceil(self.budget.max_steps / schedule.steps_per_epoch), "step limit")

    def at_probe_edge(self, steps_done: int) -> bool:
        """Whether the probe starts or ends its timing after ``steps_done`` global steps (the losses are read
        there, so the clock sees the device's work done)."""
        b = self.budget
        return (b is not None and b.seconds is not None
                and steps_done - self.first_step in (b.probe_steps // 2, b.probe_steps))

    def over_budget(self, steps_done: int, schedule: Schedule) -> str | None:
        """After ``steps_done`` global steps: fit ``schedule`` to the time budget once the probe is timed, and say
        why the run must stop now ("steps", "time"), or None."""
        b = self.budget
        if b is None or steps_done >= schedule.total_steps:  # the schedule's end: no stop
            return None
        if b.max_steps is not None and steps_done >= b.max_steps:
            return "steps"
        if b.seconds is None:
            return None
        now = time.perf_counter()
        self._probe(steps_done, now, schedule)
        return "time" if now - self.started >= b.seconds else None

    def _probe(self, steps_done: int, now: float, schedule: Schedule) -> None:
        """Start or end the probe's timing; at its end, shorten ``schedule`` when the rest does not fit."""
        b = self.budget
        session_steps = steps_done - self.first_step
        if session_steps == b.probe_steps // 2:
            self._probe_t0 = now
        elif session_steps == b.probe_steps and self._probe_t0 is not None:
            self.step_s = (now - self._probe_t0) / (b.probe_steps - b.probe_steps // 2)
            left_s = max(0.0, b.seconds - (now - self.started))
            fits = steps_done + int(left_s * b.margin / self.step_s)
            if fits < schedule.total_steps:
                # at least to the end of the epoch in progress; the clock stops a run that still overruns
                per_epoch = schedule.steps_per_epoch
                schedule.shorten(max(fits // per_epoch, math.ceil(steps_done / per_epoch)), "time budget")
