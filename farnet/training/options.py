"""What a training run is asked to do and what it reports back: :class:`TrainOptions` (the schedule, the optimiser
and the fast path, plain values read from ``params.train``; they go into the run's fingerprint) and
:class:`TrainResult` (the schedule that ran, how far it got and why it ended)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from farnet.config import Params

__all__ = ["TrainOptions", "TrainResult"]


@dataclass(frozen=True)
class TrainOptions:
    """What the engine needs to know about a run (plain values; see :class:`~farnet.config.TrainParams`)."""

    epochs: int
    sigma_px: float
    batch_size: int = 1
    optimizer: str = "adam"
    lr: float = 1e-4
    lr_milestones: Sequence[int] = (200,)
    lr_gamma: float = 0.1
    precision: str = "fp32"  # "auto", "fp32" or "bf16" (see farnet.core.fastpath)
    channels_last: bool | str = False  # True, False or "auto"
    num_workers: int = 0
    checkpoint_every: int = 1
    seed: int = 0
    lr_schedule: str = "step"  # "step" (lr_milestones, lr_gamma) or "cosine" (per step, to 0)
    warmup_steps: int = 0
    log_every_steps: int = 0  # 0: the loss is logged once per epoch
    monitor_every: int = 0  # epochs between calls of the monitor (and after the last epoch); 0: never

    @classmethod
    def from_params(cls, params: Params) -> TrainOptions:
        """The options of a run: ``params.train`` field by field, its heatmap σ and its seed."""
        return cls(**{f.name: getattr(params.train, f.name) for f in fields(cls) if hasattr(params.train, f.name)},
                   sigma_px=params.heatmap.sigma_px, seed=params.seed)


@dataclass
class TrainResult:
    """What one call of :func:`farnet.training.engine.train` did."""

    epochs: int  # of the schedule that ran: the options' own, or the shorter one a budget fitted
    steps: int  # trained in all: epochs x steps per epoch, fewer when the run was stopped inside its schedule
    wall_s: float
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0  # epochs done when this session started ...
    resumed_from_step: int = 0  # ... and global steps (a mid-epoch resume starts inside an epoch)
    best_epoch: int | None = None
    best_score: float | None = None
    fast_path: str = ""  # what the run used, e.g. "bf16+channels_last" ("auto" resolved)
    step_path: str = "eager"  # how its steps ran (farnet.training.steps.STEP_PATHS)
    planned_epochs: int | None = None  # the options' epochs, before any budget
    lr_milestones: tuple[int, ...] = ()  # of the schedule that ran
    reduced_by: str | None = None  # "time budget" or "step limit": the schedule was shortened to fit it
    stopped: str | None = None  # "time", "steps" (a budget) or "signal": the run ended inside its schedule
    step_s: float | None = None  # the step time the budget's probe measured
