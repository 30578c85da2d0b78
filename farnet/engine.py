"""The training engine every model goes through (FARNet, its variants and the baselines).

One loop: seeded, deterministic data order per epoch (``DistributedSampler`` semantics, also for one process),
targets made on the device from the landmarks (one Gaussian per head at that head's resolution, §3.4), the
loss summed over the supervised heads, optional bf16 autocast and channels_last, a progress bar, a per-epoch
log callback, and a checkpoint written atomically after every ``checkpoint_every`` epochs. A run resumes from
its checkpoint when the checkpoint's fingerprint (the training parameters and data it was made with) matches;
a non-finite loss stops the run with :class:`~farnet.errors.TrainingDiverged` and keeps the last good
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from farnet.checkpoint import load_checkpoint, save_atomic
from farnet.dataset import normalize
from farnet.errors import TrainingDiverged
from farnet.heatmaps import encode_heatmaps, scale_points
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
    precision: str = "fp32"
    channels_last: bool = False
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


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU or CUDA, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision {precision!r} is not one of 'fp32', 'bf16'")


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
        rank, world_size: for distributed data-parallel training (the model is then a DDP wrapper).
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    optimizer = build_optimizer(options.optimizer, model.parameters(), options.lr)

    start_epoch, history, wall_s = 0, [], 0.0
    best_epoch, best_score = None, None
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=device)
        if state.get("fingerprint") == fingerprint:
            _unwrap(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, history, wall_s = state["epoch"], list(state["history"]), float(state["wall_s"])
            best_epoch, best_score = state.get("best_epoch"), state.get("best_score")
        elif rank == 0:
            tqdm.write(f"{ckpt_path}: made with other parameters or data; starting afresh")

    resumed_from = start_epoch
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=options.seed)
    loader = DataLoader(dataset, batch_size=options.batch_size, sampler=sampler, num_workers=options.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=options.num_workers > 0)
    steps_per_epoch = len(loader)
    first_batch = dataset[0][0]
    input_hw = tuple(first_batch.shape[-2:])
    bar = tqdm(total=options.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, unit="step",
               desc="train", disable=not progress or rank != 0, dynamic_ncols=True)
    for epoch in range(start_epoch, options.epochs):
        t0 = time.perf_counter()
        lr = lr_at(epoch, options.lr, options.lr_milestones, options.lr_gamma)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        for step, (images, points, _) in enumerate(loader):
            images = normalize(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
            points = points.to(device, non_blocking=True)
            with autocast(device, options.precision):
                out = model(images)
            loss, parts = heatmap_loss(out, points, input_hw, options.sigma_px, loss_fn)
            loss_value = loss.detach().item()
            if not math.isfinite(loss_value):
                last = f"epoch {start_epoch}" if ckpt_path.is_file() else "none written yet"
                raise TrainingDiverged(f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                                       f"stopped. Last good checkpoint: {ckpt_path} ({last})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums["loss"] = sums.get("loss", 0.0) + loss_value
            for name, value in parts.items():
                sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + value
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.4g}")
        wall_s += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "lr": lr, **{k: v / steps_per_epoch for k, v in sums.items()}}
        if validate is not None:
            model.eval()
            with torch.no_grad():
                score = float(validate(model))
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
            side = out_dir / "checkpoint.json"
            side.with_suffix(".tmp").write_text(json.dumps({"fingerprint": fingerprint, "epoch": epoch + 1}))
            os.replace(side.with_suffix(".tmp"), side)
            start_epoch = epoch + 1
    bar.close()
    return TrainResult(epochs=options.epochs, steps=options.epochs * steps_per_epoch, wall_s=wall_s, history=history,
                       resumed_from=resumed_from,
                       best_epoch=best_epoch, best_score=best_score)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
