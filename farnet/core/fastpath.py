"""Which fast paths a run uses on its device: bf16 autocast and channels_last, resolved in one place.

``train.precision`` is ``"auto"``, ``"fp32"`` or ``"bf16"`` and ``train.channels_last`` is ``true``, ``false`` or
``"auto"``. ``"auto"`` picks the fast path where the hardware runs it natively (docs/design.md §7):

- precision: bf16 autocast on a CPU with native bf16 arithmetic (AVX-512 BF16 or AMX, through oneDNN) or a
  CUDA device with bf16 support; fp32 everywhere else. ``"fp32"`` is the switch back to full precision.
- channels_last: on CUDA (cuDNN's preferred layout for convolutions), and on CPU together with bf16 (oneDNN's
  bf16 convolutions run in NHWC; in NCHW every layer pays a layout reorder).

An explicit ``"bf16"`` is honoured even where bf16 is only emulated (slow but correct). Predictions of every
fast path are checked against fp32 by ``tests/core/test_fastpath.py`` and timed by ``farnet bench``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from farnet.core.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class FastPath:
    """The resolved settings of a run: ``precision`` is ``"fp32"`` or ``"bf16"``, never ``"auto"``."""

    precision: str
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        """e.g. ``"bf16+channels_last"`` or ``"fp32"``."""
        return self.precision + ("+channels_last" if self.channels_last else "")


def bf16_native(device: str | torch.device) -> bool:
    """Whether ``device`` does bf16 arithmetic in hardware (not by emulation).

    CPU: oneDNN's bf16 kernels are available and the CPU has AVX-512 BF16 or AMX tiles. CUDA: the device
    supports bf16 without emulation (compute capability 8.0 and later).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            onednn = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
            native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        except (AttributeError, RuntimeError):  # a torch build without these private helpers: be conservative
            return False
        return bool(onednn and native)
    return False


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`bf16_native`, else ``"fp32"``; ``"fp32"``/``"bf16"`` unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(map(repr, PRECISIONS))}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def resolve_channels_last(channels_last: bool | str, device: str | torch.device, precision: str) -> bool:
    """``"auto"`` -> True on CUDA, and on CPU when the resolved ``precision`` is bf16; booleans unchanged."""
    if isinstance(channels_last, bool):
        return channels_last
    if channels_last != "auto":
        raise ValueError(f"channels_last {channels_last!r} is not one of True, False, 'auto'")
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and resolve_precision(precision, device) == "bf16")


def resolve(precision: str, channels_last: bool | str, device: str | torch.device) -> FastPath:
    """The fast path a run with these settings uses on ``device`` (the one place ``"auto"`` is decided)."""
    resolved = resolve_precision(precision, device)
    return FastPath(precision=resolved, channels_last=resolve_channels_last(channels_last, device, resolved))


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D tensor laid out that way (and not also plain contiguous, as a tensor
    with one channel or one pixel is), else ``torch.contiguous_format``: the layout to build its partners in."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def device_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a 1-D tensor on ``device``, made once and kept: a step that needs a constant (the ImageNet
    mean, a coordinate scale) then copies nothing from the host, which a captured CUDA graph could not hold and
    which costs a host synchronisation at every eager step. Treat the result as read-only. Under
    ``torch.compile`` the constant is made in the traced code (the compiler folds it)."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    key = (tuple(values), torch.device(device), dtype)
    if key not in _CONSTANTS:
        with torch.inference_mode(False):  # a normal tensor even when first asked for under inference mode
            _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return _CONSTANTS[key]


def autocast(device: str | torch.device, precision: str, cache_enabled: bool = True):
    """bf16 autocast on CPU or CUDA, or nothing for fp32; ``"auto"`` is first resolved for ``device``."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)


def path_from_environment(variable: str, paths: tuple[str, ...]) -> str:
    """The path a variable such as ``FARNET_STEP_PATH`` names, else the first of ``paths`` (the default).

    Raises:
        ConfigError: naming the variable, for a value that is not one of ``paths``.
    """
    name = os.environ.get(variable, "").strip() or paths[0]
    if name not in paths:
        raise ConfigError(f"{variable}: {name!r} is not one of {', '.join(paths)}")
    return name


def default_device() -> torch.device:
    """``FARNET_DEVICE`` if set (checked by :func:`parse_device`), else CUDA when available, else CPU."""
    name = os.environ.get("FARNET_DEVICE")
    if name:
        return parse_device(name, "FARNET_DEVICE")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_device(name: str, source: str = "--device") -> torch.device:
    """The torch device ``name`` names, checked to exist on this machine.

    Args:
        name: "cpu", "cuda", "cuda:N" or "mps".
        source: where the name came from (an option or a variable), for the message.

    Raises:
        ConfigError: naming ``source``: not a device name, a kind of device this project does not run on, or a
            CUDA/MPS device this machine does not have.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{source}: {name!r} is not a device (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"{source}: {name!r} asked for, but {why}; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{source}: {name!r} asked for, but this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{source}: {name!r} asked for, but Apple's MPS is not available here; use cpu")
    elif device.type != "cpu":
        raise ConfigError(f"{source}: {name!r} is not a device this project runs on (use cpu, cuda, cuda:N or mps)")
    return device


def tune_backends(device: str | torch.device) -> None:
    """Let cuDNN autotune its convolution algorithms for a run's fixed input size (CUDA only; process-wide).

    Autotuning picks the fastest algorithm once per shape; results may then differ between runs in the last
    bits, which seeded training tolerates (the project fixes seeds, not bitwise results across machines).
    """
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
