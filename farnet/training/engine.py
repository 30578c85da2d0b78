"""The training engine every model goes through (FARNet, its variants and the baselines).

One loop: seeded, deterministic data order per epoch (``DistributedSampler`` semantics, also for one process),
targets made on the device from the landmarks (one Gaussian per head at that head's resolution, §3.4), the
loss summed over the supervised heads, bf16 autocast and channels_last where the device runs them natively
(``"auto"``, resolved once by :mod:`farnet.core.fastpath`), data parallelism over ranks (:mod:`farnet.training.distributed`),
a progress bar, a log callback on the global-step axis (the loss every ``log_every_steps`` steps or per epoch,
and whatever a ``monitor`` measures every ``monitor_every`` epochs), and a checkpoint written atomically after
every ``checkpoint_every`` epochs. A run resumes from its checkpoint when the checkpoint's fingerprint (the training parameters and data it
was made with) matches; a non-finite loss stops the run with :class:`~farnet.core.errors.TrainingDiverged` and keeps
the last good checkpoint. A :class:`TrainBudget` bounds a session by wall time or steps: the schedule is fitted
to it after a timed probe, and a run it stops returns normally, so the caller writes its model as for any run.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from farnet.training import distributed
from farnet.core.checkpoint import load_checkpoint, save_atomic
from farnet.config import Params
from farnet.core.fileio import write_json
from farnet.core.errors import DataError, TrainingDiverged, TrainingInterrupted
from farnet.core.fastpath import FastPath, resolve, tune_backends
from farnet.training.interrupt import requested_signal, stop_on_signal, stop_requested
from farnet.training.steps import Stepper, build_optimizer, heatmap_loss, optimizer_settings, train_step  # noqa: F401 (theirs)


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


@dataclass(frozen=True)
class TrainBudget:
    """Limits on one training session: a run that must end in time (``farnet replicate``), or a tiny test run.

    Attributes:
        seconds: wall time the session may train. After ``probe_steps`` steps the engine times its steps and,
            when the rest of the schedule does not fit, trains the largest whole-epoch schedule that does
            (:func:`shortened_schedule`); past ``seconds`` it stops after the current step whatever the schedule.
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


def make_loader(dataset: Dataset, options: TrainOptions, device: str | torch.device, rank: int = 0,
                world_size: int = 1) -> tuple[DataLoader, DistributedSampler]:
    """The engine's data path: a seeded ``DistributedSampler`` (also for one process) and its ``DataLoader``.

    On CUDA the batches are put in page-locked memory, so the engine's ``non_blocking`` copies to the device
    overlap with compute.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=options.seed)
    loader = DataLoader(dataset, batch_size=options.batch_size, sampler=sampler, num_workers=options.num_workers,
                        pin_memory=torch.device(device).type == "cuda",
                        # workers must see set_epoch (seeded augmentation), so they are not kept across epochs then
                        persistent_workers=options.num_workers > 0 and not hasattr(dataset, "set_epoch"))
    return loader, sampler


def resumable_epoch(out_dir: str | Path, fingerprint: str) -> int:
    """Whole epochs already done by a checkpoint in ``out_dir`` with this fingerprint (0 if none)."""
    return resumable_point(out_dir, fingerprint)[0]


def resumable_point(out_dir: str | Path, fingerprint: str) -> tuple[int, int]:
    """Where a run with this fingerprint resumes: (whole epochs done, steps done of the next one), (0, 0) if
    nothing can be resumed; read from the small ``checkpoint.json`` written beside each checkpoint.

    Raises:
        DataError: the side file is not what the engine writes.
    """
    side = Path(out_dir) / "checkpoint.json"
    if not side.is_file() or not (Path(out_dir) / "checkpoint.pt").is_file():
        return 0, 0
    try:
        info = json.loads(side.read_text())
        if info.get("fingerprint") != fingerprint:
            return 0, 0
        return int(info.get("epoch", 0)), int(info.get("step_in_epoch", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        raise DataError(side, "not the checkpoint's side file (a JSON object with fingerprint and epoch); "
                              f"delete {Path(out_dir)} to train afresh") from None


@dataclass
class _Progress:
    """Where a run stands: what a checkpoint holds and a resumed run starts from."""

    epoch: int = 0  # epochs done
    history: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    best_epoch: int | None = None
    best_score: float | None = None
    step_in_epoch: int = 0  # after an interruption: steps of `epoch` already done ...
    epoch_sums: dict[str, float] = field(default_factory=dict)  # ... and their loss sums
    schedule: dict | None = None  # a schedule a budget shortened: {"epochs", "lr_milestones", "reduced_by"}


@stop_on_signal  # SIGINT/SIGTERM: finish the step, save a resumable checkpoint, raise TrainingInterrupted
def train(model: nn.Module, dataset: Dataset, loss_fn: nn.Module, options: TrainOptions, out_dir: str | Path, *,
          fingerprint: str, device: str | torch.device = "cpu", log: Callable[[int, dict], None] | None = None,
          validate: Callable[[nn.Module], float] | None = None,
          monitor: Callable[[nn.Module], dict[str, float]] | None = None, progress: bool = True,
          rank: int = 0, world_size: int = 1, budget: TrainBudget | None = None, step_path: str = "eager",
          read_every: int = 50) -> TrainResult:
    """Train ``model`` on ``dataset`` (items: uint8 image (1,H,W), landmarks (K,2), index).

    Writes ``out_dir/checkpoint.pt`` (resumable state) and, when ``validate`` is given, ``out_dir/best.pt``
    (the weights with the lowest validation score). Resumes from ``checkpoint.pt`` when its fingerprint
    matches ``fingerprint``.

    Args:
        fingerprint: identifies the run's parameters and data; a checkpoint with another one is not resumed.
        log: called with (global steps done, {metric name: value}) on rank 0: ``train/loss`` (and each head's
            ``train/loss_fine``, ``train/loss_coarse``) with ``lr``, as the mean over the last
            ``log_every_steps`` steps or, when that is 0, over the epoch; the monitor's values after its epochs.
        validate: called after each epoch with the model in eval mode; lower is better.
        monitor: called with the model in eval mode after every ``monitor_every`` epochs and the last one (rank
            0); its values are logged and kept in the history, never used to choose the model.
        rank, world_size: for data-parallel training: call :func:`farnet.training.distributed.init_from_env` first;
            the engine wraps the model in DDP (after loading the checkpoint on every rank), validates on
            rank 0 only, and rank 0 alone writes checkpoints, which the other ranks wait for.
        step_path: how each step runs, one of :data:`farnet.training.steps.STEP_PATHS` (not part of the fingerprint: a
            run may resume on another path); every path but ``eager`` is for one process.
        read_every: off the eager path, the losses are read on the host (and checked) every this many steps, at
            every log and at each epoch's end.
        budget: limits on this session (one process only). A run it stops inside its schedule returns with
            ``stopped`` set and the epoch in progress as the last, partial, record of its history; no checkpoint
            is written for it.

    Raises:
        TrainingInterrupted: after SIGINT/SIGTERM, with the resumable checkpoint written and the progress so far
            in its ``result`` (a :class:`TrainResult` with ``stopped="signal"``).
    """
    started = time.perf_counter()
    device = torch.device(device)
    ckpt_path = Path(out_dir) / "checkpoint.pt"
    fast = resolve(options.precision, options.channels_last, device)  # "auto" is decided here, once
    tune_backends(device)
    if world_size > 1 and not distributed.is_distributed():
        raise ValueError(f"world_size={world_size} but no process group: call farnet.training.distributed.init_from_env()")
    if world_size > 1 and budget is not None:
        raise ValueError("a training budget is for one process: ranks would not agree on when to stop")
    model.to(device=device, memory_format=fast.memory_format)
    if read_every < 1:
        raise ValueError(f"read_every must be >= 1, got {read_every}")
    optimizer = build_optimizer(options.optimizer, model.parameters(), options.lr,
                                **optimizer_settings(step_path, options.optimizer, device))
    state = _resume(ckpt_path, fingerprint, model, optimizer, device, rank)
    net = distributed.wrap(model, device) if world_size > 1 else model  # every rank has loaded the checkpoint
    stepper = Stepper(net, optimizer, loss_fn, options.sigma_px, fast, device, step_path, world_size=world_size)
    loader, sampler = make_loader(dataset, options, device, rank, world_size)
    steps_per_epoch = len(loader)
    resumed_from_step = state.epoch * steps_per_epoch + state.step_in_epoch
    bar = tqdm(total=options.epochs * steps_per_epoch, initial=resumed_from_step,
               unit="step", desc="train", disable=not progress or rank != 0, dynamic_ncols=True)
    run = _Run(model, net, optimizer, loss_fn, options, fast, device, ckpt_path, fingerprint, rank, world_size, bar,
               saved_epoch=state.epoch, log=log if rank == 0 else None, budget=budget, started=started,
               steps_per_epoch=steps_per_epoch, first_step=resumed_from_step, planned_epochs=options.epochs,
               stepper=stepper, read_every=read_every)
    if state.schedule is not None:  # a shortened schedule is the run's own from then on
        run.reschedule(state.schedule["epochs"], state.schedule["reduced_by"])
    elif budget is not None and budget.max_steps is not None:
        run.reschedule(math.ceil(budget.max_steps / steps_per_epoch), "step limit")
    resumed_from = state.epoch
    epoch = state.epoch
    while epoch < run.options.epochs:
        t0 = time.perf_counter()
        sums = run.epoch(loader, sampler, dataset, epoch, state, t0)
        record = {"epoch": epoch + 1, "lr": current_lr(run.optimizer),
                  **{k: v / run.steps_in_epoch for k, v in sums.items()}}
        state.step_in_epoch, state.epoch_sums = 0, {}
        state.wall_s += time.perf_counter() - t0
        done = epoch + 1
        if run.stopped is not None:  # a budget ended the run inside its schedule: this epoch's record is partial
            record["steps_in_epoch"] = run.steps_in_epoch
        else:
            if validate is not None:
                run.validate(validate, record, state, epoch)
            if monitor is not None and run.options.monitor_every and (done % run.options.monitor_every == 0
                                                                      or done == run.options.epochs):
                record.update(run.monitor(monitor))
        state.history.append(record)
        if run.log is not None:
            logged = {} if run.options.log_every_steps else {"lr": record["lr"], **{
                "train/" + k: v for k, v in record.items() if k.startswith("loss")}}
            logged.update({k: v for k, v in record.items() if "/" in k})  # the monitor's values
            if logged:
                run.log(epoch * steps_per_epoch + run.steps_in_epoch, logged)
        if run.stopped is not None:
            break
        state.epoch = epoch = done
        if state.epoch % run.options.checkpoint_every == 0 or state.epoch == run.options.epochs:
            run.checkpoint(state)
    bar.close()
    steps = epoch * steps_per_epoch + (run.steps_in_epoch if run.stopped is not None else 0)
    return run.result(state, steps, resumed_from=resumed_from, resumed_from_step=resumed_from_step)


def _resume(ckpt_path: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device, rank: int) -> _Progress:
    """The progress of a checkpoint made with this fingerprint (its weights and optimizer state loaded), or a
    fresh start."""
    if not ckpt_path.is_file():
        return _Progress()
    saved = load_checkpoint(ckpt_path, map_location=device)
    if saved.get("fingerprint") != fingerprint:
        if rank == 0:
            tqdm.write(f"{ckpt_path}: made with other parameters or data; starting afresh")
        return _Progress()
    _unwrap(model).load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return _Progress(epoch=saved["epoch"], history=list(saved["history"]), wall_s=float(saved["wall_s"]),
                     best_epoch=saved.get("best_epoch"), best_score=saved.get("best_score"),
                     step_in_epoch=int(saved.get("step_in_epoch", 0)), epoch_sums=dict(saved.get("epoch_sums", {})),
                     schedule=saved.get("schedule"))


@dataclass
class _Run:
    """What one training run's epochs share: the model (and its DDP wrapper), optimizer, loss and options."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    options: TrainOptions  # replaced by a shorter schedule when a budget asks for one
    fast: FastPath
    device: torch.device
    ckpt_path: Path
    fingerprint: str
    rank: int
    world_size: int
    bar: tqdm
    saved_epoch: int = 0  # the epoch of the last checkpoint written
    log: Callable[[int, dict], None] | None = None  # rank 0's log (see `train`)
    window: dict[str, float] = field(default_factory=dict)  # loss sums since the last per-step log
    budget: TrainBudget | None = None
    started: float = 0.0  # perf_counter() when the session began (the budget's clock)
    steps_per_epoch: int = 1
    first_step: int = 0  # global steps done when the session began
    planned_epochs: int = 0  # the options' epochs, before any budget
    steps_in_epoch: int = 0  # steps of the current epoch done (all of them once it is over)
    stepper: Stepper | None = None  # how each step runs (farnet.training.steps)
    read_every: int = 50  # read the losses on the host every this many steps (each step on the eager path)
    reduced_by: str | None = None  # why the schedule was shortened
    stopped: str | None = None  # why the budget ended the run inside its schedule
    step_s: float | None = None  # the probe's step time
    probe_t0: float | None = None  # when the timed half of the probe began

    def epoch(self, loader: DataLoader, sampler: DistributedSampler, dataset: Dataset, epoch: int,
              state: _Progress, t0: float) -> dict[str, float]:
        """One epoch's steps (those after ``state.step_in_epoch`` when resumed mid-epoch): the loss sums. A budget
        may end it early (``self.stopped``); ``self.steps_in_epoch`` says how many steps it holds."""
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):  # seeded per-epoch augmentation
            dataset.set_epoch(epoch)
        self.model.train()
        self.steps_in_epoch = state.step_in_epoch
        sums = state.epoch_sums
        for step, (images, points, _) in enumerate(loader):
            if step < state.step_in_epoch:  # done before the interruption; the epoch's seed fixes the order
                continue
            o = self.options  # read at every step: a budget may shorten the schedule inside an epoch
            global_step = epoch * self.steps_per_epoch + step
            self.stepper.set_lr(scheduled_lr(o, epoch, global_step, o.epochs * self.steps_per_epoch))
            self.stepper.step(images.to(self.device, non_blocking=True), points.to(self.device, non_blocking=True))
            self.steps_in_epoch = step + 1
            self.bar.update(1)  # redrawn at most every 0.1 s; the loss in the postfix changes at reads only
            done = global_step + 1
            if (self.stepper.read_every_step or done % self.read_every == 0 or step + 1 == self.steps_per_epoch
                    or (o.log_every_steps and done % o.log_every_steps == 0) or self.at_probe_edge(done)):
                self.fold(sums, epoch, step)
            if stop_requested(self.device, self.world_size):
                self.fold(sums, epoch, step)
                self.bar.close()
                wall_s = state.wall_s + time.perf_counter() - t0
                partial = replace(self.result(state, done), wall_s=wall_s, stopped="signal")
                _stop_interrupted(self.model, self.optimizer, self.ckpt_path, self.rank, partial,
                                  fingerprint=self.fingerprint, epoch=epoch, step_in_epoch=step + 1,
                                  epoch_sums=sums, history=state.history, best_epoch=state.best_epoch,
                                  best_score=state.best_score, wall_s=wall_s, schedule=self.schedule())
            self.stopped = self.over_budget(done)
            if self.stopped is not None:
                self.fold(sums, epoch, step)
                break
        return sums

    def fold(self, sums: dict[str, float], epoch: int, step: int) -> None:
        """Read the losses of the steps since the last read (one host synchronisation) into the epoch's ``sums``,
        the log window and the progress bar; stop on a loss that is not finite."""
        if self.stepper.pending == 0:
            return
        n, values = self.stepper.read()
        loss = values["loss"]
        if not math.isfinite(loss):
            last = f"epoch {self.saved_epoch}" if self.ckpt_path.is_file() else "none written yet"
            when = f"step {step + 1}" if n == 1 else f"one of steps {step + 2 - n}..{step + 1}"
            raise TrainingDiverged(f"loss became {loss} at epoch {epoch + 1}, {when}; "
                                   f"stopped. Last good checkpoint: {self.ckpt_path} ({last})")
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        if self.options.log_every_steps:
            self.log_window(epoch * self.steps_per_epoch + step + 1, n, values)
        self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss / n:.4g}", refresh=False)

    def at_probe_edge(self, steps_done: int) -> bool:
        """Whether the budget's probe starts or ends its timing after ``steps_done`` steps (the losses are read
        there, so the clock sees the device's work done)."""
        b = self.budget
        return (b is not None and b.seconds is not None
                and steps_done - self.first_step in (b.probe_steps // 2, b.probe_steps))

    def over_budget(self, steps_done: int) -> str | None:
        """After ``steps_done`` global steps: fit the schedule to the time budget once the probe is timed, and
        say why the run must stop now ("steps", "time"), or None."""
        b = self.budget
        if b is None or steps_done >= self.options.epochs * self.steps_per_epoch:  # the schedule's end: no stop
            return None
        if b.max_steps is not None and steps_done >= b.max_steps:
            return "steps"
        if b.seconds is None:
            return None
        now = time.perf_counter()
        session_steps = steps_done - self.first_step
        if session_steps == b.probe_steps // 2:
            self.probe_t0 = now
        elif session_steps == b.probe_steps and self.probe_t0 is not None:
            self.step_s = (now - self.probe_t0) / (b.probe_steps - b.probe_steps // 2)
            left_s = max(0.0, b.seconds - (now - self.started))
            fits = steps_done + int(left_s * b.margin / self.step_s)
            if fits < self.options.epochs * self.steps_per_epoch:
                # at least to the end of the epoch in progress; the clock below stops a run that still overruns
                self.reschedule(max(fits // self.steps_per_epoch, math.ceil(steps_done / self.steps_per_epoch)),
                                "time budget")
        return "time" if now - self.started >= b.seconds else None

    def reschedule(self, epochs: int, reason: str) -> None:
        """Train ``epochs`` instead, the lr milestones at the same fractions (:func:`shortened_schedule`)."""
        # deviation: (budgeted runs only) fewer epochs than the schedule asked for (the paper's 300), the lr drop
        # at the same fraction of the shorter run; train_info.json's `schedule` and the provenance say so
        o = self.options
        new_epochs, milestones = shortened_schedule(o.epochs, o.lr_milestones, epochs)
        if (new_epochs, milestones) == (o.epochs, tuple(o.lr_milestones)):
            return
        self.options = replace(o, epochs=new_epochs, lr_milestones=milestones)
        self.reduced_by = reason
        self.bar.total = new_epochs * self.steps_per_epoch
        self.bar.refresh()

    def schedule(self) -> dict | None:
        """The shortened schedule, as a checkpoint keeps it (None: the options' own)."""
        if self.reduced_by is None:
            return None
        return {"epochs": self.options.epochs, "lr_milestones": list(self.options.lr_milestones),
                "reduced_by": self.reduced_by}

    def result(self, state: _Progress, steps: int, *, resumed_from: int = 0, resumed_from_step: int = 0) -> TrainResult:
        """What the run did in ``steps`` global steps: the schedule that ran and why it ended early (if it did)."""
        return TrainResult(epochs=self.options.epochs, steps=steps, wall_s=state.wall_s, history=state.history,
                           resumed_from=resumed_from, resumed_from_step=resumed_from_step,
                           best_epoch=state.best_epoch, best_score=state.best_score, fast_path=self.fast.describe(),
                           step_path=self.stepper.path if self.stepper is not None else "eager",
                           planned_epochs=self.planned_epochs, lr_milestones=tuple(self.options.lr_milestones),
                           reduced_by=self.reduced_by, stopped=self.stopped, step_s=self.step_s)

    def log_window(self, steps_done: int, n: int, values: dict[str, float]) -> None:
        """Add the loss sums of ``n`` steps to the window; every ``log_every_steps`` steps log its means and the lr
        (the losses are read at each of those steps, so a window holds exactly its steps)."""
        w = self.window
        w["n"] = w.get("n", 0) + n
        for key, value in values.items():
            w[key] = w.get(key, 0.0) + value
        if steps_done % self.options.log_every_steps == 0:
            count = w.pop("n")
            if self.log is not None:
                self.log(steps_done, {"lr": current_lr(self.optimizer), **{f"train/{k}": v / count for k, v in w.items()}})
            w.clear()

    def monitor(self, monitor: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
        """The monitor's values for the model in eval mode (rank 0; the other ranks wait), training mode after."""
        values: dict[str, float] = {}
        if self.rank == 0:
            model = _unwrap(self.model)
            model.eval()
            with torch.no_grad():
                values = {k: float(v) for k, v in monitor(model).items()}
            model.train()
        if self.world_size > 1:
            distributed.barrier()
        return values

    def validate(self, validate: Callable[[nn.Module], float], record: dict, state: _Progress, epoch: int) -> None:
        """The epoch's validation score into ``record``; the best weights to ``best.pt`` (rank 0 validates the
        plain module: a DDP forward would wait for the other ranks)."""
        score = math.nan
        if self.rank == 0:
            _unwrap(self.model).eval()
            with torch.no_grad():
                score = float(validate(_unwrap(self.model)))
        if self.world_size > 1:
            score = distributed.broadcast_float(score, self.device)  # all ranks agree on the best epoch
        record["val_score"] = score
        if state.best_score is None or score < state.best_score:
            state.best_epoch, state.best_score = epoch + 1, score
            if self.rank == 0:
                save_atomic({"model": _unwrap(self.model).state_dict(), "epoch": epoch + 1},
                            self.ckpt_path.parent / "best.pt")

    def checkpoint(self, state: _Progress) -> None:
        """The resumable state after ``state.epoch`` epochs, written atomically by rank 0; the others wait."""
        self.saved_epoch = state.epoch
        if self.rank == 0:
            save_atomic({"model": _unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                         "epoch": state.epoch, "fingerprint": self.fingerprint, "history": state.history,
                         "wall_s": state.wall_s, "best_epoch": state.best_epoch, "best_score": state.best_score,
                         "schedule": self.schedule()}, self.ckpt_path)
            write_json(self.ckpt_path.parent / "checkpoint.json", {"fingerprint": self.fingerprint,
                                                                   "epoch": state.epoch})
        if self.world_size > 1:
            distributed.barrier()  # the checkpoint is complete before any rank goes on (or reads it)


def _stop_interrupted(model: nn.Module, optimizer: torch.optim.Optimizer, ckpt_path: Path, rank: int,
                      result: TrainResult, *, epoch: int, step_in_epoch: int, **state) -> None:
    """Save the state after ``step_in_epoch`` steps of 0-based ``epoch`` (rank 0) and raise TrainingInterrupted
    carrying ``result``, the progress so far (the caller may still write a model from the weights in memory)."""
    if rank == 0:
        save_atomic({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "step_in_epoch": step_in_epoch, **state}, ckpt_path)
        side = ckpt_path.parent / "checkpoint.json"
        write_json(side, {"fingerprint": state["fingerprint"], "epoch": epoch, "step_in_epoch": step_in_epoch})
    distributed.barrier()  # no rank exits (and gets the launcher to stop rank 0) before the checkpoint is written
    signum = requested_signal()
    cause = f"{signal.Signals(signum).name} received" if signum else "another rank was signalled"
    raise TrainingInterrupted(f"{cause}: stopped after step {step_in_epoch} of epoch {epoch + 1}; resumable "
                              f"checkpoint {ckpt_path}. Run the same command again to resume.",
                              signum or signal.SIGTERM, result=result)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
