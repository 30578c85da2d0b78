"""Data-parallel training across processes: one process per GPU (or CPU worker), launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every
process; :func:`init_from_env` turns them into a process group (NCCL on CUDA, gloo on CPU) and the device this
process trains on. Without them (a plain ``python`` run) everything here is a no-op for one process, so the same
code path serves one GPU, many GPUs and many nodes (docs/design.md §6, scale-out)::

    rank, world_size, device = distributed.init_from_env()
    try:
        train(model, dataset, loss_fn, options, out_dir, RunSettings(fingerprint=fp, device=device,
              rank=rank, world_size=world_size))   # the engine wraps the model in DDP itself
    finally:
        distributed.cleanup()

    torchrun --standalone --nproc-per-node 8 pipelines/train.py ...        # one node, 8 GPUs
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 ...  # two nodes

Each rank sees ``1 / world_size`` of every epoch (``DistributedSampler``), and DDP averages the gradients, so
``world_size`` ranks with batch ``b`` take the same steps as one process with batch ``world_size · b`` when the
loss is a mean over the batch (BatchNorm excepted: its statistics stay per process).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["barrier", "broadcast_float", "cleanup", "init_from_env", "is_distributed", "mean_across_ranks", "wrap"]


def init_from_env(timeout_s: float = 1800.0) -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment.

    The device is ``cuda:LOCAL_RANK`` with NCCL when CUDA is available (and ``FARNET_DEVICE`` does not say
    ``cpu``), else the CPU with gloo. For a single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) no group is
    made and the device is ``FARNET_DEVICE``, else CUDA when available, else the CPU.

    Args:
        timeout_s: how long a collective may wait for the other ranks before failing.

    Returns:
        ``(rank, world_size, device)``.

    Raises:
        ValueError: ``WORLD_SIZE`` > 1 but ``RANK`` is missing, or a variable is not an integer in range.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    wanted = os.environ.get("FARNET_DEVICE")
    use_cuda = torch.cuda.is_available() and (wanted is None or torch.device(wanted).type == "cuda")
    if world_size <= 1:
        return 0, 1, torch.device(wanted or ("cuda" if use_cuda else "cpu"))
    if "RANK" not in os.environ:
        raise ValueError(f"WORLD_SIZE={world_size} but RANK is not set: launch with torchrun")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in 0..{world_size - 1}")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if backend == "nccl" else None)
    return rank, world_size, device


def wrap(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` (already on ``device``) in :class:`DistributedDataParallel`; unchanged for one process or when
    it is already wrapped.

    DDP broadcasts rank 0's weights and buffers when it is built, so every rank starts from the same model.
    """
    if not is_distributed() or isinstance(model, DistributedDataParallel):
        return model
    device = torch.device(device)
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device], output_device=device)
    return DistributedDataParallel(model)


def cleanup() -> None:
    """Leave the process group (a no-op when there is none)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is part of an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (a copy; NaN on any rank gives NaN on every rank)."""
    if not is_distributed():
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def broadcast_float(value: float, device: str | torch.device, src: int = 0) -> float:
    """Rank ``src``'s ``value`` on every rank (``device``: where the backend communicates, CUDA for NCCL)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=src)
    return float(tensor.item())


def barrier() -> None:
    """Wait until every rank gets here (a no-op for one process)."""
    if is_distributed():
        dist.barrier()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
