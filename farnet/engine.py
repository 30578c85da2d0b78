"""The training engine every model goes through (FARNet, its variants and the baselines).

One loop: seeded, deterministic data order per epoch (``DistributedSampler`` semantics, also for one process),
targets made on the device from the landmarks (one Gaussian per head at that head's resolution, §3.4), the
loss summed over the supervised heads, bf16 autocast and channels_last where the device runs them natively
(``"auto"``, resolved once by :mod:`farnet.fastpath`), data parallelism over ranks (:mod:`farnet.distributed`),
a progress bar, a per-epoch log callback, and a checkpoint written atomically after every ``checkpoint_every``
epochs. A run resumes from its checkpoint when the checkpoint's fingerprint (the training parameters and data it
was made with) matches; a non-finite loss stops the run with :class:`~farnet.errors.TrainingDiverged` and keeps
the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from farnet import distributed
from farnet.checkpoint import load_checkpoint, save_atomic
from farnet.fileio import write_json
from farnet.dataset import normalize
from farnet.errors import TrainingDiverged, TrainingInterrupted
from farnet.fastpath import FastPath, resolve, resolve_precision, tune_backends
from farnet.heatmaps import encode_heatmaps, scale_points
from farnet.interrupt import requested_signal, stop_on_signal, stop_requested
from farnet.model import Heatmaps


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


@dataclass
class TrainResult:
    epochs: int
    steps: int
    wall_s: float
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0
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


def autocast(device: str | torch.device, precision: str):
    """bf16 autocast on CPU or CUDA, or nothing for fp32; ``"auto"`` is first resolved for ``device``
    (:func:`farnet.fastpath.resolve_precision`)."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


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
    """Epochs already done by a checkpoint in ``out_dir`` with this fingerprint (0 if none), read from the
    small ``checkpoint.json`` written beside each checkpoint."""
    side = Path(out_dir) / "checkpoint.json"
    if not side.is_file() or not (Path(out_dir) / "checkpoint.pt").is_file():
        return 0
    try:
        info = json.loads(side.read_text())
    except json.JSONDecodeError:
        return 0
    return int(info.get("epoch", 0)) if info.get("fingerprint") == fingerprint else 0


@stop_on_signal  # SIGINT/SIGTERM: finish the step, save a resumable checkpoint, raise TrainingInterrupted
def train(model: nn.Module, dataset: Dataset, loss_fn: nn.Module, options: TrainOptions, out_dir: str | Path, *,
          fingerprint: str, device: str | torch.device = "cpu", log: Callable[[int, dict], None] | None = None,
          validate: Callable[[nn.Module], float] | None = None, progress: bool = True,
          rank: int = 0, world_size: int = 1) -> TrainResult:
    """Train ``model`` on ``dataset`` (items: uint8 image (1,H,W), landmarks (K,2), index).

    Writes ``out_dir/checkpoint.pt`` (resumable state) and, when ``validate`` is given, ``out_dir/best.pt``
    (the weights with the lowest validation score). Resumes from ``checkpoint.pt`` when its fingerprint
    matches ``fingerprint``.

    Args:
        fingerprint: identifies the run's parameters and data; a checkpoint with another one is not resumed.
        log: called after each epoch with (epoch, {"loss": ..., "loss_fine": ..., "loss_coarse": ..., "lr": ...}).
        validate: called after each epoch with the model in eval mode; lower is better.
        rank, world_size: for data-parallel training: call :func:`farnet.distributed.init_from_env` first;
            the engine wraps the model in DDP (after loading the checkpoint on every rank), validates on
            rank 0 only, and rank 0 alone writes checkpoints, which the other ranks wait for.
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    fast = resolve(options.precision, options.channels_last, device)  # "auto" is decided here, once
    tune_backends(device)
    if world_size > 1 and not distributed.is_distributed():
        raise ValueError(f"world_size={world_size} but no process group: call farnet.distributed.init_from_env()")
    model.to(device=device, memory_format=fast.memory_format)
    optimizer = build_optimizer(options.optimizer, model.parameters(), options.lr)

    start_epoch, history, wall_s = 0, [], 0.0
    skip_steps, partial_sums = 0, {}  # after an interruption: steps of start_epoch already done, their loss sums
    best_epoch, best_score = None, None
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=device)
        if state.get("fingerprint") == fingerprint:
            _unwrap(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, history, wall_s = state["epoch"], list(state["history"]), float(state["wall_s"])
            best_epoch, best_score = state.get("best_epoch"), state.get("best_score")
            skip_steps, partial_sums = int(state.get("step_in_epoch", 0)), dict(state.get("epoch_sums", {}))
        elif rank == 0:
            tqdm.write(f"{ckpt_path}: made with other parameters or data; starting afresh")

    resumed_from = start_epoch
    net = distributed.wrap(model, device) if world_size > 1 else model  # every rank has loaded the checkpoint
    loader, sampler = make_loader(dataset, options, device, rank, world_size)
    steps_per_epoch = len(loader)
    bar = tqdm(total=options.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch + skip_steps, unit="step",
               desc="train", disable=not progress or rank != 0, dynamic_ncols=True)
    for epoch in range(start_epoch, options.epochs):
        t0 = time.perf_counter()
        lr = lr_at(epoch, options.lr, options.lr_milestones, options.lr_gamma)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):  # seeded per-epoch augmentation
            dataset.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = partial_sums
        for step, (images, points, _) in enumerate(loader):
            if step < skip_steps:  # done before the interruption; the epoch's seed fixes the order
                continue
            loss_value, parts = train_step(net, images.to(device, non_blocking=True),
                                           points.to(device, non_blocking=True), optimizer, loss_fn,
                                           options.sigma_px, fast, world_size)
            if not math.isfinite(loss_value):
                last = f"epoch {start_epoch}" if ckpt_path.is_file() else "none written yet"
                raise TrainingDiverged(f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                                       f"stopped. Last good checkpoint: {ckpt_path} ({last})")
            sums["loss"] = sums.get("loss", 0.0) + loss_value
            for name, value in parts.items():
                sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + value
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.4g}")
            if stop_requested(device, world_size):
                bar.close()
                _stop_interrupted(model, optimizer, ckpt_path, rank, fingerprint=fingerprint, epoch=epoch,
                                  step_in_epoch=step + 1, epoch_sums=sums, history=history, best_epoch=best_epoch,
                                  best_score=best_score, wall_s=wall_s + time.perf_counter() - t0)
        skip_steps, partial_sums = 0, {}
        wall_s += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "lr": lr, **{k: v / steps_per_epoch for k, v in sums.items()}}
        if validate is not None:
            score = math.nan  # rank 0 validates the plain module (a DDP forward would wait for the other ranks)
            if rank == 0:
                _unwrap(model).eval()
                with torch.no_grad():
                    score = float(validate(_unwrap(model)))
            if world_size > 1:
                score = distributed.broadcast_float(score, device)  # all ranks agree on the best epoch
            record["val_score"] = score
            if best_score is None or score < best_score:
                best_epoch, best_score = epoch + 1, score
                if rank == 0:
                    save_atomic({"model": _unwrap(model).state_dict(), "epoch": epoch + 1}, out_dir / "best.pt")
        history.append(record)
        if log is not None and rank == 0:
            log(epoch + 1, record)
        last_epoch = epoch + 1 == options.epochs
        if rank == 0 and ((epoch + 1) % options.checkpoint_every == 0 or last_epoch):
            save_atomic({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                         "fingerprint": fingerprint, "history": history, "wall_s": wall_s,
                         "best_epoch": best_epoch, "best_score": best_score}, ckpt_path)
            write_json(out_dir / "checkpoint.json", {"fingerprint": fingerprint, "epoch": epoch + 1})
            start_epoch = epoch + 1
        if world_size > 1 and ((epoch + 1) % options.checkpoint_every == 0 or last_epoch):
            distributed.barrier()  # the checkpoint is complete before any rank goes on (or reads it)
    bar.close()
    return TrainResult(epochs=options.epochs, steps=options.epochs * steps_per_epoch, wall_s=wall_s, history=history,
                       resumed_from=resumed_from,
                       best_epoch=best_epoch, best_score=best_score, fast_path=fast.describe())


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
