"""The training engine every model goes through (FARNet, its variants and the baselines).

One loop: seeded, deterministic data order per epoch (``DistributedSampler`` semantics, also for one process),
targets made on the device from the landmarks (one Gaussian per head at that head's resolution, §3.4), the
loss summed over the supervised heads, bf16 autocast and channels_last where the device runs them natively
(``"auto"``, resolved once by :mod:`farnet.core.fastpath`), data parallelism over ranks
(:mod:`farnet.training.distributed`), a progress bar, a log on the global-step axis
(:mod:`farnet.training.losslog`), and a checkpoint written atomically after every ``checkpoint_every`` epochs
(:mod:`farnet.training.resume`). A run resumes from its checkpoint when the checkpoint's fingerprint (the training
parameters and data it was made with) matches; a non-finite loss stops the run with
:class:`~farnet.core.errors.TrainingDiverged` and keeps the last good checkpoint. A
:class:`~farnet.training.budget.TrainBudget` bounds a session by wall time or steps (:mod:`farnet.training.budget`).

What a run is asked to do is a :class:`~farnet.training.options.TrainOptions` (part of the run's fingerprint);
where and how it runs, and whom it reports to, is a :class:`RunSettings`. How each step runs is a
:class:`~farnet.training.steps.Stepper`.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from farnet.core.errors import TrainingDiverged, TrainingInterrupted
from farnet.core.fastpath import resolve
from farnet.training import distributed
from farnet.training.budget import BudgetClock, TrainBudget
from farnet.training.interrupt import requested_signal, stop_check_due, stop_on_signal, stop_requested
from farnet.training.losslog import LossLog
from farnet.training.options import TrainOptions, TrainResult
from farnet.training.resume import CheckpointWriter, Progress, load_progress
from farnet.training.schedule import Schedule, current_lr
from farnet.training.steps import Stepper, make_stepper

__all__ = ["RunSettings", "make_loader", "steps_per_epoch", "train"]


@dataclass(frozen=True)
class RunSettings:
    """Where and how one training run goes, and whom it reports to (none of it but the fingerprint is part of
    what the run trains).

    Attributes:
        fingerprint: identifies the run's parameters and data; a checkpoint with another one is not resumed.
        device: where the run trains.
        rank, world_size: for data-parallel training: call :func:`farnet.training.distributed.init_from_env`
            first; the engine wraps the model in DDP (after loading the checkpoint on every rank), validates on
            rank 0 only, and rank 0 alone writes checkpoints, which the other ranks wait for.
        step_path: how each step runs, one of :data:`farnet.training.steps.STEP_PATHS` (not part of the
            fingerprint: a run may resume on another path); every path but ``eager`` is for one process.
        read_every: off the eager path, the losses are read on the host (and checked) every this many steps, at
            every log and at each epoch's end.
        budget: limits on this session (one process only). A run it stops inside its schedule returns with
            ``stopped`` set and the epoch in progress as the last, partial, record of its history; no checkpoint
            is written for it.
        progress: show a progress bar (rank 0).
        log: called with (global steps done, {metric name: value}) on rank 0 (:mod:`farnet.training.losslog`).
        validate: called after each epoch with the model in eval mode; lower is better.
        monitor: called with the model in eval mode after every ``monitor_every`` epochs and the last one (rank
            0); its values are logged and kept in the history, never used to choose the model.
    """

    fingerprint: str
    device: str | torch.device = "cpu"
    rank: int = 0
    world_size: int = 1
    step_path: str = "eager"
    read_every: int = 50
    budget: TrainBudget | None = None
    progress: bool = True
    log: Callable[[int, dict], None] | None = None
    validate: Callable[[nn.Module], float] | None = None
    monitor: Callable[[nn.Module], dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if self.world_size > 1 and self.budget is not None:
            raise ValueError("a training budget is for one process: ranks would not agree on when to stop")
        if self.read_every < 1:
            raise ValueError(f"read_every must be >= 1, got {self.read_every}")


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


def steps_per_epoch(num_items: int, batch_size: int, world_size: int = 1) -> int:
    """The steps of one epoch on each rank: the length of :func:`make_loader`'s loader over ``num_items`` items
    (each rank's share rounded up, its last batch smaller)."""
    return math.ceil(math.ceil(num_items / world_size) / batch_size)


@stop_on_signal  # SIGINT/SIGTERM: finish the step, save a resumable checkpoint, raise TrainingInterrupted
def train(model: nn.Module, dataset: Dataset, loss_fn: nn.Module, options: TrainOptions, out_dir: str | Path,
          settings: RunSettings) -> TrainResult:
    """Train ``model`` on ``dataset`` (items: uint8 image (1,H,W), landmarks (K,2), index).

    Writes ``out_dir/checkpoint.pt`` (resumable state) and, when ``settings.validate`` is given,
    ``out_dir/best.pt`` (the weights with the lowest validation score). Resumes from ``checkpoint.pt`` when its
    fingerprint matches ``settings.fingerprint``.

    Raises:
        TrainingInterrupted: after SIGINT/SIGTERM, with the resumable checkpoint written and the progress so far
            in its ``result`` (a :class:`~farnet.training.options.TrainResult` with ``stopped="signal"``).
        TrainingDiverged: the loss is not finite; the last good checkpoint is kept.
        ValueError: ``world_size`` > 1 without a process group.
    """
    clock = BudgetClock(settings.budget)  # the budget's time counts from here
    device = torch.device(settings.device)
    fast = resolve(options.precision, options.channels_last, device)  # "auto" is decided here, once
    if settings.world_size > 1 and not distributed.is_distributed():
        raise ValueError(f"world_size={settings.world_size} but no process group: "
                         "call farnet.training.distributed.init_from_env()")
    model.to(device=device, memory_format=fast.memory_format)
    plain = model.module if hasattr(model, "module") else model  # a model given already wrapped
    ckpt_path = Path(out_dir) / "checkpoint.pt"
    state, optimizer_state = load_progress(ckpt_path, settings.fingerprint, plain, device, settings.rank)
    net = distributed.wrap(model, device) if settings.world_size > 1 else model  # every rank has loaded it
    stepper = make_stepper(net, loss_fn, fast, device, settings.step_path, optimizer=options.optimizer,
                           lr=options.lr, sigma_px=options.sigma_px, world_size=settings.world_size,
                           optimizer_state=optimizer_state)
    loader, sampler = make_loader(dataset, options, device, settings.rank, settings.world_size)
    schedule = Schedule(options, steps_per_epoch(len(dataset), options.batch_size, settings.world_size))
    assert len(loader) == schedule.steps_per_epoch
    if state.schedule is not None:  # a shortened schedule is the run's own from then on
        schedule.restore(state.schedule)
    else:
        clock.limit_steps(schedule)
    clock.first_step = state.epoch * schedule.steps_per_epoch + state.step_in_epoch
    writer = CheckpointWriter(ckpt_path, settings.fingerprint, settings.rank, saved_epoch=state.epoch)
    return _EpochLoop(plain, stepper, settings, schedule, clock, writer, (dataset, loader, sampler)).run(state)


class _EpochLoop:
    """One run's epochs: the steps, the reads of their losses, the end of each epoch (validation, monitor, log,
    checkpoint), and the stops (a budget, a signal, a bad loss).

    Args:
        model: the plain module (not its DDP wrapper), which is validated, monitored and saved.
        stepper: takes the steps (on the DDP wrapper in a data-parallel run).
        data: the dataset, its loader and its sampler (:func:`make_loader`).
    """

    def __init__(self, model: nn.Module, stepper: Stepper, settings: RunSettings, schedule: Schedule,
                 clock: BudgetClock, writer: CheckpointWriter, data: tuple[Dataset, DataLoader, DistributedSampler]):
        self.model, self.stepper, self.settings = model, stepper, settings
        self.schedule, self.clock, self.writer = schedule, clock, writer
        self.dataset, self.loader, self.sampler = data
        rank0 = settings.rank == 0
        self.losses = LossLog(settings.log if rank0 else None, schedule.options.log_every_steps, stepper.optimizer)
        self.bar = tqdm(total=schedule.total_steps, initial=clock.first_step, unit="step", desc="train",
                        disable=not settings.progress or not rank0, dynamic_ncols=True)
        self.steps_in_epoch = 0  # steps of the current epoch done (all of them once it is over)
        self.stopped: str | None = None  # why the budget ended the run inside its schedule

    def run(self, state: Progress) -> TrainResult:
        """The epochs from ``state`` (a fresh or resumed run's progress) to the schedule's end or a budget's stop."""
        resumed_from, resumed_from_step = state.epoch, self.clock.first_step
        epoch = state.epoch
        while epoch < self.schedule.epochs:
            t0 = time.perf_counter()
            sums = self._epoch(epoch, state, t0)
            self._end_epoch(epoch, state, sums, t0)
            if self.stopped is not None:
                break
            state.epoch = epoch = epoch + 1
            if state.epoch % self.schedule.options.checkpoint_every == 0 or state.epoch == self.schedule.epochs:
                self.writer.write(self.model, self.stepper.optimizer, state, self.schedule.saved())
        self.bar.close()
        steps = epoch * self.schedule.steps_per_epoch + (self.steps_in_epoch if self.stopped is not None else 0)
        return self._result(state, steps, resumed_from=resumed_from, resumed_from_step=resumed_from_step)

    def _epoch(self, epoch: int, state: Progress, t0: float) -> dict[str, float]:
        """One epoch's steps (those after ``state.step_in_epoch`` when resumed mid-epoch): the loss sums. A budget
        may end it early (``self.stopped``); ``self.steps_in_epoch`` says how many steps it holds."""
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):  # seeded per-epoch augmentation
            self.dataset.set_epoch(epoch)
        self.model.train()
        self.steps_in_epoch = state.step_in_epoch
        sums = state.epoch_sums
        for step, (images, points, _) in enumerate(self.loader):
            if step < state.step_in_epoch:  # done before the interruption; the epoch's seed fixes the order
                continue
            done = self._step(epoch, step, images, points)
            if self._read_due(done, step):
                self._read(sums, epoch, step)
            if self._stop_requested(done, step):
                self._read(sums, epoch, step)
                self._interrupt(state, epoch, t0)
            self.stopped = self.clock.over_budget(done, self.schedule)
            if self.bar.total != self.schedule.total_steps:  # the probe fitted a shorter schedule
                self.bar.total = self.schedule.total_steps
                self.bar.refresh()
            if self.stopped is not None:
                self._read(sums, epoch, step)
                break
        return sums

    def _step(self, epoch: int, step: int, images: torch.Tensor, points: torch.Tensor) -> int:
        """Step ``step`` of 0-based ``epoch`` at its scheduled learning rate; returns the global steps done."""
        global_step = epoch * self.schedule.steps_per_epoch + step
        # read at every step: a budget may shorten the schedule inside an epoch
        self.stepper.set_lr(self.schedule.lr(epoch, global_step))
        device = self.stepper.device
        self.stepper.step(images.to(device, non_blocking=True), points.to(device, non_blocking=True))
        self.steps_in_epoch = step + 1
        self.bar.update(1)  # redrawn at most every 0.1 s; the loss in the postfix changes at reads only
        return global_step + 1

    def _stop_requested(self, steps_done: int, step: int) -> bool:
        """Whether a signal asks the run to stop after ``steps_done`` global steps (``step`` of the epoch); data-
        parallel ranks agree on it only on the steps :func:`~farnet.training.interrupt.stop_check_due` names."""
        world_size = self.settings.world_size
        return (stop_check_due(steps_done, step + 1 == self.schedule.steps_per_epoch, world_size)
                and stop_requested(self.stepper.device, world_size))

    def _read_due(self, steps_done: int, step: int) -> bool:
        """Whether the losses are read on the host after ``steps_done`` global steps (``step`` of the epoch)."""
        every = self.losses.every_steps
        return (self.stepper.read_every_step or steps_done % self.settings.read_every == 0
                or step + 1 == self.schedule.steps_per_epoch or (every and steps_done % every == 0)
                or self.clock.at_probe_edge(steps_done))

    def _read(self, sums: dict[str, float], epoch: int, step: int) -> None:
        """Read the losses of the steps since the last read (one host synchronisation) into the epoch's ``sums``,
        the log window and the progress bar; stop on a loss that is not finite."""
        if self.stepper.pending == 0:
            return
        n, values = self.stepper.read()
        loss = values["loss"]
        if not math.isfinite(loss):
            when = f"step {step + 1}" if n == 1 else f"one of steps {step + 2 - n}..{step + 1}"
            raise TrainingDiverged(f"loss became {loss} at epoch {epoch + 1}, {when}; "
                                   f"stopped. Last good checkpoint: {self.writer.last_good()}")
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        self.losses.add(epoch * self.schedule.steps_per_epoch + step + 1, n, values)
        self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss / n:.4g}", refresh=False)

    def _end_epoch(self, epoch: int, state: Progress, sums: dict[str, float], t0: float) -> None:
        """The epoch's record (mean losses, lr; the validation score and the monitor's values, or the steps of an
        epoch a budget cut short) into the history and the log."""
        record = {"epoch": epoch + 1, "lr": current_lr(self.stepper.optimizer),
                  **{k: v / self.steps_in_epoch for k, v in sums.items()}}
        state.step_in_epoch, state.epoch_sums = 0, {}
        state.wall_s += time.perf_counter() - t0
        done, options = epoch + 1, self.schedule.options
        if self.stopped is not None:  # a budget ended the run inside its schedule: this epoch's record is partial
            record["steps_in_epoch"] = self.steps_in_epoch
        else:
            if self.settings.validate is not None:
                self._validate(record, state, epoch)
            if self.settings.monitor is not None and options.monitor_every and (
                    done % options.monitor_every == 0 or done == options.epochs):
                record.update(self._monitor())
        state.history.append(record)
        self.losses.log_epoch(epoch * self.schedule.steps_per_epoch + self.steps_in_epoch, record)

    def _validate(self, record: dict, state: Progress, epoch: int) -> None:
        """The epoch's validation score into ``record``; the best weights to ``best.pt`` (rank 0 validates the
        plain module: a DDP forward would wait for the other ranks)."""
        score = math.nan
        if self.settings.rank == 0:
            self.model.eval()
            with torch.no_grad():
                score = float(self.settings.validate(self.model))
        if self.settings.world_size > 1:
            score = distributed.broadcast_float(score, self.stepper.device)  # all ranks agree on the best epoch
        record["val_score"] = score
        if state.best_score is None or score < state.best_score:
            state.best_epoch, state.best_score = epoch + 1, score
            self.writer.write_best(self.model, epoch + 1)

    def _monitor(self) -> dict[str, float]:
        """The monitor's values for the model in eval mode (rank 0; the other ranks wait), training mode after."""
        values: dict[str, float] = {}
        if self.settings.rank == 0:
            self.model.eval()
            with torch.no_grad():
                values = {k: float(v) for k, v in self.settings.monitor(self.model).items()}
            self.model.train()
        if self.settings.world_size > 1:
            distributed.barrier()
        return values

    def _interrupt(self, state: Progress, epoch: int, t0: float) -> NoReturn:
        """Save the state after the steps done of 0-based ``epoch`` and raise TrainingInterrupted carrying the
        progress so far (the caller may still write a model from the weights in memory)."""
        self.bar.close()
        state.wall_s += time.perf_counter() - t0
        state.step_in_epoch = self.steps_in_epoch
        steps_done = epoch * self.schedule.steps_per_epoch + self.steps_in_epoch
        # resumed_from and resumed_from_step stay 0 in a signal's partial result (and so in its train_info.json)
        partial = replace(self._result(state, steps_done), stopped="signal")
        self.writer.write(self.model, self.stepper.optimizer, state, self.schedule.saved())
        signum = requested_signal()
        cause = f"{signal.Signals(signum).name} received" if signum else "another rank was signalled"
        raise TrainingInterrupted(f"{cause}: stopped after step {self.steps_in_epoch} of epoch {epoch + 1}; "
                                  f"resumable checkpoint {self.writer.path}. Run the same command again to resume.",
                                  signum or signal.SIGTERM, result=partial)

    def _result(self, state: Progress, steps: int, *, resumed_from: int = 0,
                resumed_from_step: int = 0) -> TrainResult:
        """What the run did in ``steps`` global steps: the schedule that ran and why it ended early (if it did)."""
        schedule = self.schedule
        return TrainResult(epochs=schedule.epochs, steps=steps, wall_s=state.wall_s, history=state.history,
                           resumed_from=resumed_from, resumed_from_step=resumed_from_step,
                           best_epoch=state.best_epoch, best_score=state.best_score,
                           fast_path=self.stepper.fast.describe(), step_path=self.stepper.path,
                           planned_epochs=schedule.planned_epochs, lr_milestones=tuple(schedule.options.lr_milestones),
                           reduced_by=schedule.reduced_by, stopped=self.stopped, step_s=self.clock.step_s)
