"""One GPU per run when several runs share a node: an exclusive lock per device.

DVC runs its stages one after another, and a plain ``python pipelines/train.py`` takes ``cuda`` (the first GPU).
When several trainings start side by side on a node with several GPUs (``make paper-gpus``, docs/gpu-node.md),
each takes a free GPU for its whole run: one lock file per device in a lock folder (``$FARNET_GPU_LOCKS``, else
``farnet-gpu-locks`` in the system's temporary folder, which is local to the node), held with ``fcntl.flock``.
The operating system releases such a lock when its process ends in any way, a crash or ``kill -9`` included, so
a dead run never keeps its GPU. When every device is taken, the caller waits, polling, until one is freed.

The lock files are named by the device as the node knows it: its entry in ``CUDA_VISIBLE_DEVICES`` (an index or
a ``GPU-<uuid>``), else its index. Two runs that see different subsets of the GPUs therefore still agree on which
physical device each lock stands for, and the run trains on the index that device has in its own visible set.

Not locked (:func:`device_for_run`): a device named by ``FARNET_DEVICE`` (an explicit choice wins, even a GPU
another run holds), the ranks of a ``torchrun`` job (``LOCAL_RANK`` assigns their devices), the CPU, and a node
with a single visible GPU (there is nothing to choose).
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from farnet.core.errors import ConfigError

LOCKS_VARIABLE = "FARNET_GPU_LOCKS"
WAIT_LOG_EVERY_S = 600.0  # while waiting, the "all taken" line again every 10 minutes, so a log shows it waits


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lock_folder() -> Path:
    """``$FARNET_GPU_LOCKS``, else ``<temp>/farnet-gpu-locks``: the folder every run of the node locks in."""
    return Path(os.environ.get(LOCKS_VARIABLE) or Path(tempfile.gettempdir()) / "farnet-gpu-locks")


def visible_devices(count: int, visible: str | None = None) -> list[str]:
    """The node's name of each device this process sees, in torch's order: entry ``i`` is ``cuda:i``.

    Args:
        count: how many CUDA devices torch sees (``torch.cuda.device_count()``).
        visible: ``CUDA_VISIBLE_DEVICES`` (None: unset, every device by its index). CUDA stops at the first
            entry it cannot use, so only the first ``count`` entries are devices.

    Raises:
        ConfigError: naming ``CUDA_VISIBLE_DEVICES``, when it lists fewer devices than torch sees.
    """
    if visible is None:
        return [str(i) for i in range(count)]
    names = [name.strip() for name in visible.split(",") if name.strip()]
    if len(names) < count:
        raise ConfigError(f"CUDA_VISIBLE_DEVICES={visible!r} lists {len(names)} device(s) but torch sees {count}")
    return names[:count]


@dataclass
class DeviceClaim:
    """A device taken for a run: ``index`` (its place in the device list, the ``N`` of ``cuda:N``) and ``name``
    (its lock's name). The lock lasts until :meth:`release` or the end of the process."""

    index: int
    name: str
    path: Path
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        """Free the device for another run (also done by the OS when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the one descriptor that holds the flock releases it
            self._fd = None

    def __enter__(self) -> DeviceClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_path(folder: Path, name: str) -> Path:
    return folder / ("gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock")


def _try_lock(path: Path, holder: str) -> int | None:
    """The descriptor holding ``path``'s exclusive lock, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)  # who holds it, for the waiting line of the others
    os.write(fd, holder.encode())
    return fd


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def claim_device(names: Sequence[str], *, folder: Path | None = None, holder: str = "", poll_s: float = 5.0,
                 log: Callable[[str], None] = _stderr) -> DeviceClaim:
    """Take the first free device of ``names``, waiting (without a time limit) while every one is taken.

    Args:
        names: each device's name on the node, in the caller's order (:func:`visible_devices`).
        folder: where the lock files are (default :func:`lock_folder`); made when missing.
        holder: who takes it (e.g. the run), written into the lock file for the others' waiting line.
        poll_s: seconds between two attempts while every device is taken.
        log: where the waiting line goes (stderr by default).

    Raises:
        ConfigError: ``names`` is empty.
    """
    if not names:
        raise ConfigError("no CUDA device to claim (CUDA_VISIBLE_DEVICES hides them all?)")
    folder = lock_folder() if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [_lock_path(folder, name) for name in names]
    label = f"{holder or 'run'} (pid {os.getpid()} on {socket.gethostname()})"
    next_log = time.monotonic()
    while True:
        for index, (name, path) in enumerate(zip(names, paths)):
            fd = _try_lock(path, label)
            if fd is not None:
                return DeviceClaim(index=index, name=name, path=path, _fd=fd)
        if time.monotonic() >= next_log:
            held = ", ".join(f"{name}: {_holder(path)}" for name, path in zip(names, paths))
            log(f"all {len(names)} GPUs are taken ({held}); {holder or 'this run'} waits for one to be freed "
                f"(locks in {folder}; set FARNET_DEVICE to choose one yourself)")
            next_log = time.monotonic() + WAIT_LOG_EVERY_S
        time.sleep(poll_s)


def device_for_run(device: torch.device, world_size: int, *, holder: str = "", count: int | None = None,
                   visible: str | None = None, folder: Path | None = None,
                   log: Callable[[str], None] = _stderr) -> tuple[torch.device, DeviceClaim | None]:
    """The device a single-process run trains on, and the claim that keeps it (None when nothing is locked).

    A run that would take plain ``cuda`` on a node with more than one visible GPU takes a free one through
    :func:`claim_device` instead; everything else is returned as it is (see the module's docstring).

    Args:
        device: the device the run would use (:func:`farnet.training.distributed.init_from_env`).
        world_size: the processes of the run; above 1, ``torchrun`` has assigned the devices.
        count: the visible CUDA devices (default ``torch.cuda.device_count()``).
        visible: ``CUDA_VISIBLE_DEVICES`` (default: read from the environment).
    """
    if device.type != "cuda" or device.index is not None or world_size > 1 or os.environ.get("FARNET_DEVICE"):
        return device, None
    count = torch.cuda.device_count() if count is None else count
    if count <= 1:
        return device, None
    names = visible_devices(count, os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible)
    claim = claim_device(names, folder=folder, holder=holder, log=log)
    log(f"{holder or 'run'}: took GPU {claim.name} as cuda:{claim.index} (lock {claim.path})")
    return torch.device("cuda", claim.index), claim
