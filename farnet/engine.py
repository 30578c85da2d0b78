"""The training engine every model goes through (FARNet, its variants and the baselines).

One loop: seeded, deterministic data order per epoch (``DistributedSampler`` semantics, also for one process),
targets made on the device from the landmarks (one Gaussian per head at that head's resolution, §3.4), the
loss summed over the supervised heads, bf16 autocast and channels_last where the device runs them natively
(``"auto"``, resolved once by :mod:`farnet.fastpath`), data parallelism over ranks (:mod:`farnet.distributed`),
a progress bar, a log callback on the global-step axis (the loss every ``log_every_steps`` steps or per epoch,
and whatever a ``monitor`` measures every ``monitor_every`` epochs), and a checkpoint written atomically after
every ``checkpoint_every`` epochs. A run resumes from its checkpoint when the checkpoint's fingerprint (the training parameters and data it
was made with) matches; a non-finite loss stops the run with :class:`~farnet.errors.TrainingDiverged` and keeps
the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from farnet import distributed
from farnet.checkpoint import load_checkpoint, save_atomic
from farnet.config import Params
from farnet.fileio import write_json
from farnet.errors import DataError, TrainingDiverged, TrainingInterrupted
from farnet.fastpath import FastPath, autocast, resolve, tune_backends
from farnet.heatmaps import encode_heatmaps, scale_points
from farnet.interrupt import requested_signal, stop_on_signal, stop_requested
from farnet.inference import Heatmaps, normalize


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
    precision: str = "fp32"  # "auto", "fp32" or "bf16" (see farnet.fastpath)
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
    epochs: int
    steps: int
    wall_s: float
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0  # epochs done when this session started ...
    resumed_from_step: int = 0  # ... and global steps (a mid-epoch resume starts inside an epoch)
    best_epoch: int | None = None
    best_score: float | None = None
    fast_path: str = ""  # what the run used, e.g. "bf16+channels_last" ("auto" resolved)


def build_optimizer(name: str, parameters, lr: float) -> torch.optim.Optimizer:
    """Adam (the authors' code) or Adadelta (the paper's text, §4.2), both at ``lr``."""
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    if name == "adadelta":
        return torch.optim.Adadelta(parameters, lr=lr)
    raise ValueError(f"optimizer {name!r} is not one of 'adam', 'adadelta'")


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


def heatmap_loss(out: Heatmaps, points_xy: torch.Tensor, input_hw: tuple[int, int], sigma_px: float,
                 loss_fn: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the loss over the supervised heads (coarse-to-fine supervision, §3.4).

    Args:
        out: the network's heads; ``fine`` at ``input_hw``, ``coarse`` at half of it.
        points_xy: (B, K, 2) landmarks in input pixels.

    Returns:
        The total loss and each head's value.
    """
    total = None
    parts = {}
    for name, pred in (("fine", out.fine), ("coarse", out.coarse)):
        if pred is None:
            continue
        hw = tuple(pred.shape[-2:])
        target = encode_heatmaps(scale_points(points_xy, input_hw, hw), hw, sigma_px)  # (B, K, h, w)
        value = loss_fn(pred, target)
        parts[name] = float(value.detach())
        total = value if total is None else total + value
    if total is None:
        raise ValueError("the model returned no supervised heatmaps")
    return total, parts


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


def train_step(model: nn.Module, images: torch.Tensor, points: torch.Tensor, optimizer: torch.optim.Optimizer,
               loss_fn: nn.Module, sigma_px: float, fast: FastPath, world_size: int = 1) -> tuple[float, dict[str, float]]:
    """One optimisation step on a batch already on the device (the step ``farnet bench`` times).

    Args:
        images: (B, 1, H, W) uint8, normalised here.
        points: (B, K, 2) landmarks in input pixels.
        fast: the resolved precision and memory format (:func:`farnet.fastpath.resolve`).
        world_size: > 1 in a distributed run; the loss returned is then the mean over the ranks.

    Returns:
        The loss and each head's value on this rank. A loss that is not finite (on any rank) is returned before
        the weights are touched, so the caller can stop with the last good weights.
    """
    x = normalize(images).contiguous(memory_format=fast.memory_format)  # (B, 3, H, W)
    with autocast(x.device, fast.precision):
        out = model(x)
    loss, parts = heatmap_loss(out, points, tuple(x.shape[-2:]), sigma_px, loss_fn)
    # all ranks see the same mean, so all take the same branch (a rank that stopped alone would hang the others)
    loss_value = (distributed.mean_across_ranks(loss) if world_size > 1 else loss.detach()).item()
    if not math.isfinite(loss_value):
        return loss_value, parts
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss_value, parts


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


@stop_on_signal  # SIGINT/SIGTERM: finish the step, save a resumable checkpoint, raise TrainingInterrupted
def train(model: nn.Module, dataset: Dataset, loss_fn: nn.Module, options: TrainOptions, out_dir: str | Path, *,
          fingerprint: str, device: str | torch.device = "cpu", log: Callable[[int, dict], None] | None = None,
          validate: Callable[[nn.Module], float] | None = None,
          monitor: Callable[[nn.Module], dict[str, float]] | None = None, progress: bool = True,
          rank: int = 0, world_size: int = 1) -> TrainResult:
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
        rank, world_size: for data-parallel training: call :func:`farnet.distributed.init_from_env` first;
            the engine wraps the model in DDP (after loading the checkpoint on every rank), validates on
            rank 0 only, and rank 0 alone writes checkpoints, which the other ranks wait for.
    """
    device = torch.device(device)
    ckpt_path = Path(out_dir) / "checkpoint.pt"
    fast = resolve(options.precision, options.channels_last, device)  # "auto" is decided here, once
    tune_backends(device)
    if world_size > 1 and not distributed.is_distributed():
        raise ValueError(f"world_size={world_size} but no process group: call farnet.distributed.init_from_env()")
    model.to(device=device, memory_format=fast.memory_format)
    optimizer = build_optimizer(options.optimizer, model.parameters(), options.lr)
    state = _resume(ckpt_path, fingerprint, model, optimizer, device, rank)
    net = distributed.wrap(model, device) if world_size > 1 else model  # every rank has loaded the checkpoint
    loader, sampler = make_loader(dataset, options, device, rank, world_size)
    steps_per_epoch = len(loader)
    resumed_from_step = state.epoch * steps_per_epoch + state.step_in_epoch
    bar = tqdm(total=options.epochs * steps_per_epoch, initial=resumed_from_step,
               unit="step", desc="train", disable=not progress or rank != 0, dynamic_ncols=True)
    run = _Run(model, net, optimizer, loss_fn, options, fast, device, ckpt_path, fingerprint, rank, world_size, bar,
               saved_epoch=state.epoch, log=log if rank == 0 else None)
    resumed_from = state.epoch
    for epoch in range(state.epoch, options.epochs):
        t0 = time.perf_counter()
        sums = run.epoch(loader, sampler, dataset, epoch, state, t0)
        record = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"],
                  **{k: v / steps_per_epoch for k, v in sums.items()}}
        state.step_in_epoch, state.epoch_sums = 0, {}
        state.wall_s += time.perf_counter() - t0
        if validate is not None:
            run.validate(validate, record, state, epoch)
        done = epoch + 1
        if monitor is not None and options.monitor_every and (done % options.monitor_every == 0
                                                              or done == options.epochs):
            record.update(run.monitor(monitor))
        state.history.append(record)
        if run.log is not None:
            logged = {} if options.log_every_steps else {"lr": record["lr"], **{
                "train/" + k: v for k, v in record.items() if k.startswith("loss")}}
            logged.update({k: v for k, v in record.items() if "/" in k})  # the monitor's values
            if logged:
                run.log(done * steps_per_epoch, logged)
        state.epoch = epoch + 1
        if state.epoch % options.checkpoint_every == 0 or state.epoch == options.epochs:
            run.checkpoint(state)
    bar.close()
    return TrainResult(epochs=options.epochs, steps=options.epochs * steps_per_epoch, wall_s=state.wall_s,
                       history=state.history, resumed_from=resumed_from, resumed_from_step=resumed_from_step,
                       best_epoch=state.best_epoch,
                       best_score=state.best_score, fast_path=fast.describe())


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
                     step_in_epoch=int(saved.get("step_in_epoch", 0)), epoch_sums=dict(saved.get("epoch_sums", {})))


@dataclass
class _Run:
    """What one training run's epochs share: the model (and its DDP wrapper), optimizer, loss and options."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    options: TrainOptions
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

    def epoch(self, loader: DataLoader, sampler: DistributedSampler, dataset: Dataset, epoch: int,
              state: _Progress, t0: float) -> dict[str, float]:
        """One epoch's steps (those after ``state.step_in_epoch`` when resumed mid-epoch): the loss sums."""
        o = self.options
        steps_per_epoch = len(loader)
        total_steps = o.epochs * steps_per_epoch
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):  # seeded per-epoch augmentation
            dataset.set_epoch(epoch)
        self.model.train()
        sums = state.epoch_sums
        for step, (images, points, _) in enumerate(loader):
            if step < state.step_in_epoch:  # done before the interruption; the epoch's seed fixes the order
                continue
            global_step = epoch * steps_per_epoch + step
            for group in self.optimizer.param_groups:
                group["lr"] = scheduled_lr(o, epoch, global_step, total_steps)
            loss_value, parts = train_step(self.net, images.to(self.device, non_blocking=True),
                                           points.to(self.device, non_blocking=True), self.optimizer, self.loss_fn,
                                           o.sigma_px, self.fast, self.world_size)
            if not math.isfinite(loss_value):
                last = f"epoch {self.saved_epoch}" if self.ckpt_path.is_file() else "none written yet"
                raise TrainingDiverged(f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                                       f"stopped. Last good checkpoint: {self.ckpt_path} ({last})")
            sums["loss"] = sums.get("loss", 0.0) + loss_value
            for name, value in parts.items():
                sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + value
            if o.log_every_steps:
                self.log_window(global_step + 1, loss_value, parts)
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.4g}")
            if stop_requested(self.device, self.world_size):
                self.bar.close()
                _stop_interrupted(self.model, self.optimizer, self.ckpt_path, self.rank,
                                  fingerprint=self.fingerprint, epoch=epoch, step_in_epoch=step + 1,
                                  epoch_sums=sums, history=state.history, best_epoch=state.best_epoch,
                                  best_score=state.best_score, wall_s=state.wall_s + time.perf_counter() - t0)
        return sums

    def log_window(self, steps_done: int, loss_value: float, parts: dict[str, float]) -> None:
        """Add a step's losses to the window; every ``log_every_steps`` steps log its means and the lr."""
        w = self.window
        w["n"] = w.get("n", 0) + 1
        for key, value in (("loss", loss_value), *((f"loss_{k}", v) for k, v in parts.items())):
            w[key] = w.get(key, 0.0) + value
        if steps_done % self.options.log_every_steps == 0:
            n = w.pop("n")
            if self.log is not None:
                self.log(steps_done, {"lr": self.optimizer.param_groups[0]["lr"],
                                      **{f"train/{k}": v / n for k, v in w.items()}})
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
                         "wall_s": state.wall_s, "best_epoch": state.best_epoch, "best_score": state.best_score},
                        self.ckpt_path)
            write_json(self.ckpt_path.parent / "checkpoint.json", {"fingerprint": self.fingerprint,
                                                                   "epoch": state.epoch})
        if self.world_size > 1:
            distributed.barrier()  # the checkpoint is complete before any rank goes on (or reads it)


def _stop_interrupted(model: nn.Module, optimizer: torch.optim.Optimizer, ckpt_path: Path, rank: int, *,
                      epoch: int, step_in_epoch: int, **state) -> None:
    """Save the state after ``step_in_epoch`` steps of 0-based ``epoch`` (rank 0) and raise TrainingInterrupted."""
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
                              signum or signal.SIGTERM)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
