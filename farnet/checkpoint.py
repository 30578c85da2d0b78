"""Checkpoints: atomic writes and safe loads.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with ``weights_only=True``. It
is written to a temporary file in the same folder and renamed over the old one, so an interrupted write never
leaves a broken checkpoint behind, and a failed one (a full disk) raises :class:`~farnet.errors.WriteError`
naming the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from farnet.errors import DataError
from farnet.fileio import atomic_write


def save_atomic(obj: dict, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    Raises:
        WriteError: the file could not be written (e.g. a full disk); the old file, if any, is kept and no
            temporary file is left behind.
    """
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing or unreadable file raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise DataError(path, f"not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict) or "model" not in obj:
        raise DataError(path, "not a FARNet checkpoint (no 'model' entry)")
    return obj
