"""Checkpoints: atomic writes and safe loads.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with ``weights_only=True``. It
is written to a temporary file in the same folder and renamed over the old one, so an interrupted write never
leaves a broken checkpoint behind, and a failed one (a full disk) raises :class:`~farnet.core.errors.WriteError`
naming the file. A process killed outright (SIGKILL, the OOM killer) cannot remove its temporary file; a run
removes such leftovers when it starts (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from farnet.core.errors import DataError
from farnet.core.fileio import atomic_write

__all__ = ["save_atomic", "load_checkpoint", "remove_stale_temporaries"]

log = logging.getLogger(__name__)

# atomic_write's temporary names: tempfile.mkstemp(prefix=<name> + ".", suffix=".tmp"), 8 random characters
_TEMPORARY = re.compile(r".+\.[a-z0-9_]{8}\.tmp")


def save_atomic(obj: dict, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    Raises:
        WriteError: the file could not be written (e.g. a full disk); the old file, if any, is kept and no
            temporary file is left behind.
    """
    return atomic_write(path, lambda fh: _save(obj, fh))


class _WriteErrors:
    """A binary file that remembers the first OSError of its ``write`` (torch's zip writer turns it into a
    RuntimeError "unexpected pos", which would hide e.g. "No space left on device")."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name):
        return getattr(self.fh, name)


def _save(obj: dict, fh) -> None:
    """``torch.save`` into ``fh``, raising the file's own OSError when a write failed."""
    recording = _WriteErrors(fh)
    try:
        torch.save(obj, recording)
    except RuntimeError:
        if recording.error is not None:
            raise recording.error from None
        raise


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


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``folder`` (not its subfolders).

    A save killed by SIGKILL leaves ``<name>.<8 random characters>.tmp`` (for ``checkpoint.pt``, up to the
    size of a checkpoint) that nothing else removes. Call this when a run starts, before any save, and from
    one process only: a temporary being written by another live process would be removed under it.

    Args:
        folder: the folder checkpoints are saved in; a missing folder is fine.

    Returns:
        The removed files, sorted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(path for path in folder.iterdir()
                   if _TEMPORARY.fullmatch(path.name) and path.is_file() and not path.is_symlink())
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted save", path)
    return stale
