"""A run's resumable checkpoint: what it holds (:class:`Progress`), where a run resumes from it, and the one
writer of it (:class:`CheckpointWriter`, which also keeps the best validated weights).

``checkpoint.pt`` holds the weights, the optimiser state and the progress (epochs done, history, best epoch, the
schedule a budget shortened); after an interruption also the steps of the epoch in progress and their loss sums.
It is written atomically by rank 0 after every ``checkpoint_every`` epochs and when SIGINT/SIGTERM stops a run,
with a small ``checkpoint.json`` beside it (fingerprint, epoch, step) that a caller reads without loading
tensors. A run resumes only from a checkpoint with its own fingerprint (the training parameters and data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from farnet.core.checkpoint import load_checkpoint, save_atomic
from farnet.core.errors import DataError
from farnet.core.fileio import write_json
from farnet.training import distributed

__all__ = ["CheckpointWriter", "Progress", "load_progress", "resumable_point"]


@dataclass
class Progress:
    """Where a run stands: what a checkpoint holds and a resumed run starts from."""

    epoch: int = 0  # epochs done
    history: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    best_epoch: int | None = None
    best_score: float | None = None
    step_in_epoch: int = 0  # after an interruption: steps of `epoch` already done ...
    epoch_sums: dict[str, float] = field(default_factory=dict)  # ... and their loss sums
    schedule: dict | None = None  # a schedule a budget shortened: {"epochs", "lr_milestones", "reduced_by"}


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


def load_progress(ckpt_path: Path, fingerprint: str, model: nn.Module, device: torch.device,
                  rank: int) -> tuple[Progress, dict | None]:
    """The progress of a checkpoint made with this fingerprint, its weights loaded into ``model`` (the plain
    module, before any DDP wrapper), or a fresh start.

    Returns:
        The progress and the saved optimiser state (None for a fresh start).
    """
    if not ckpt_path.is_file():
        return Progress(), None
    saved = load_checkpoint(ckpt_path, map_location=device)
    if saved.get("fingerprint") != fingerprint:
        if rank == 0:
            aside = set_aside(ckpt_path, str(saved.get("fingerprint")))
            tqdm.write(f"{ckpt_path}: made with other parameters or data; set aside as {aside.name}, starting afresh")
        return Progress(), None
    model.load_state_dict(saved["model"])
    progress = Progress(epoch=saved["epoch"], history=list(saved["history"]), wall_s=float(saved["wall_s"]),
                        best_epoch=saved.get("best_epoch"), best_score=saved.get("best_score"),
                        step_in_epoch=int(saved.get("step_in_epoch", 0)),
                        epoch_sums=dict(saved.get("epoch_sums", {})), schedule=saved.get("schedule"))
    return progress, saved["optimizer"]


def set_aside(ckpt_path: Path, old_fingerprint: str) -> Path:
    """Rename a checkpoint of another run (and its side file) to ``checkpoint-<its fingerprint>.pt``, so that a
    new run never overwrites the work of an interrupted one. Returns the new name of the checkpoint."""
    safe = "".join(c for c in old_fingerprint if c.isalnum())[:16] or "unknown"
    aside = ckpt_path.with_name(f"{ckpt_path.stem}-{safe}{ckpt_path.suffix}")
    side = ckpt_path.with_suffix(".json")
    if side.is_file():
        side.replace(aside.with_suffix(".json"))
    ckpt_path.replace(aside)
    return aside


class CheckpointWriter:
    """Writes one run's resumable checkpoint (rank 0; the other ranks wait for it).

    Args:
        path: the checkpoint's file (``checkpoint.pt``); ``checkpoint.json`` goes beside it.
        fingerprint: the run's, kept in both files.
        rank: this process's; only rank 0 writes.
        saved_epoch: the epoch of the checkpoint already on disk (a resumed run's).
    """

    def __init__(self, path: Path, fingerprint: str, rank: int, saved_epoch: int = 0):
        self.path, self.fingerprint, self.rank, self.saved_epoch = path, fingerprint, rank, saved_epoch

    def write(self, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
              schedule: dict | None) -> None:
        """The resumable state of ``progress`` with the weights of ``model`` (the plain module) and
        ``optimizer``'s state, written atomically.

        ``progress.step_in_epoch`` > 0 marks a stop inside epoch ``progress.epoch`` (0-based): the steps done of
        it and their loss sums are kept too, and a resumed run skips those steps. Else ``progress.epoch`` whole
        epochs are done.
        """
        inside = progress.step_in_epoch > 0
        position = {"epoch": progress.epoch, **({"step_in_epoch": progress.step_in_epoch} if inside else {})}
        if self.rank == 0:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **position,
                         "fingerprint": self.fingerprint, **({"epoch_sums": progress.epoch_sums} if inside else {}),
                         "history": progress.history, "wall_s": progress.wall_s, "best_epoch": progress.best_epoch,
                         "best_score": progress.best_score, "schedule": schedule}, self.path)
            write_json(self.path.parent / "checkpoint.json", {"fingerprint": self.fingerprint, **position})
        if not inside:
            self.saved_epoch = progress.epoch
        # the checkpoint is complete before any rank goes on, reads it, or exits (and gets the launcher to stop
        # rank 0 mid-write)
        distributed.barrier()

    def write_best(self, model: nn.Module, epoch: int) -> None:
        """The weights of ``model`` (the plain module) after 1-based ``epoch``, the best validated so far, to
        ``best.pt`` beside the checkpoint (rank 0)."""
        if self.rank == 0:
            save_atomic({"model": model.state_dict(), "epoch": epoch}, self.path.parent / "best.pt")

    def last_good(self) -> str:
        """The checkpoint a diverged run leaves, for its message: the file and the epoch it holds."""
        last = f"epoch {self.saved_epoch}" if self.path.is_file() else "none written yet"
        return f"{self.path} ({last})"
