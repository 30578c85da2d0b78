"""The record ``farnet replicate`` keeps of its run in its ``--out`` folder: ``run.json``, ``progress.json`` and
``benchmark.json``, each rewritten atomically as soon as it changes, so a command killed at any point leaves what
was done (:mod:`farnet.commands.replicate`); the command's clock against its deadline (:class:`Deadline`); and
what the schedule's run says about a full one (:func:`schedule_projection`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from farnet.config import Params
from farnet.core.fileio import write_json
from farnet.report.gpu import file_manifest
from farnet.training.engine import steps_per_epoch

__all__ = ["Deadline", "RunRecord", "describe_projection", "in_run_timing", "schedule_projection"]


@dataclass(frozen=True)
class Deadline:
    """The command's wall-clock limit, counted from its start (before the re-execution and the imports:
    :func:`farnet.core.allocator.command_started_at`).

    Attributes:
        started_at: the command's start, seconds since the epoch.
        seconds: its wall time; None: no limit.
        margin_s: kept back from every phase, for the last writes of the record.
        clock: seconds since the epoch (``time.time``; a test's fake clock).
    """

    started_at: float
    seconds: float | None = None
    margin_s: float = 15.0
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def elapsed(self) -> float:
        """Seconds since the command began."""
        return self.clock() - self.started_at

    def left(self) -> float | None:
        """Seconds a phase may still take (the margin kept back; <= 0 once it is reached), None without a limit."""
        return None if self.seconds is None else self.seconds - self.elapsed() - self.margin_s


class RunRecord:
    """The run's own files in ``out``, each rewritten atomically as soon as it changes (module text): ``run.json``
    (how the run is made, with the phase it has reached), ``progress.json`` (the training's last log) and
    ``benchmark.json``.

    Attributes:
        out: the folder every result is written into.
        fields: what ``run.json`` says; its ``status`` is the first phase, each write gives the current one.
        bench: what ``benchmark.json`` says.
        deadline: the command's clock (its times are counted from its start).
    """

    def __init__(self, out: Path, fields: dict, deadline: Deadline):
        self.out, self.deadline = out, deadline
        self.fields = {"status": "unpacking", **fields}
        self.bench: dict = {}
        write_json(out / "run.json", self.fields)

    def status(self, status: str, **extra) -> None:
        """Rewrite ``run.json`` at the phase ``status``, with ``extra`` fields after the others."""
        write_json(self.out / "run.json", {**self.fields, "status": status, **extra})

    def save_benchmark(self, **entries) -> None:
        """Add ``entries`` to ``benchmark.json`` and rewrite it."""
        self.bench.update(entries)
        write_json(self.out / "benchmark.json", self.bench)

    def skip(self, what: str, reason: str) -> None:
        """Record in ``run.json`` and ``benchmark.json`` (under ``skipped``) that ``what`` did not run, and why."""
        self.fields["skipped"] = {**self.fields.get("skipped", {}), what: reason}
        self.save_benchmark(skipped={**self.bench.get("skipped", {}), what: reason})

    def progress_log(self) -> Callable[[int, dict], None]:
        """The training log as ``progress.json``: the last values logged, the steps done and the time since start."""
        def log(step: int, values: dict) -> None:
            write_json(self.out / "progress.json",
                       {"steps_done": step, "elapsed_s": round(self.deadline.elapsed(), 1), **values})

        return log

    def finish(self, exit_code: int) -> None:
        """The last ``run.json``: done, or interrupted (the model reached was evaluated), the wall time and the
        sha256 of every file the run wrote (``farnet replicate-import`` imports only files that match them)."""
        self.status("done" if exit_code == 0 else "interrupted", wall_s=round(self.deadline.elapsed(), 1),
                    files=file_manifest(self.out))


def in_run_timing(train_info: dict) -> dict:
    """The step time the training itself achieved (data loading and logging included) and its probe's."""
    steps, wall_s = train_info["steps"], train_info["train_wall_s"]
    return {"steps": steps, "train_wall_s": wall_s, "mean_step_s": wall_s / steps if steps else None,
            "probe_step_s": train_info["schedule"].get("probe_step_s"), "step_path": train_info.get("step_path"),
            "method": "the training itself: wall time of its epochs (data loading and logging included) over its "
                      "steps; the probe: the second half of the budget's probe steps"}


def schedule_projection(train_info: dict, params: Params, step_paths: dict) -> dict:
    """How much of the planned schedule ran, and what all of it would take at the step times measured.

    ``projected_full_s`` is the planned steps times the trained path's step as timed before the run
    (``step_paths``; the step alone), ``projected_full_s_in_run`` the same at the training's own mean step (data
    loading and logging included): a full run needs at least the latter, plus start-up and evaluation.
    """
    per_epoch = steps_per_epoch(train_info["n_train_images"], params.train.batch_size)
    planned = train_info["schedule"]["planned_epochs"] * per_epoch
    path = train_info.get("step_path")
    timed = {p: e["step_s"] for p, e in step_paths.items() if e.get("status") == "ok"}
    in_run = in_run_timing(train_info)["mean_step_s"]
    step_s = timed.get(path)
    return {"planned_steps": planned, "steps_done": train_info["steps"],
            "done_fraction": round(train_info["steps"] / planned, 4), "step_path": path,
            "step_s_by_path": timed, "step_s": step_s,
            "projected_full_s": None if step_s is None else round(planned * step_s, 1),
            "in_run_step_s": in_run, "projected_full_s_in_run": None if in_run is None else round(planned * in_run, 1),
            "method": f"planned steps = planned epochs x {per_epoch} steps per epoch (training images / batch "
                      "size); projected = planned steps x step time (step_s: the path timed alone before the run; "
                      "in_run_step_s: the training's wall time over its steps)"}


def describe_projection(projection: dict) -> str:
    """The projection (:func:`schedule_projection`) as the command's summary line."""
    p = projection
    timed = ", ".join(f"{path} {1000 * s:.1f} ms" for path, s in p["step_s_by_path"].items())
    line = (f"trained on {p['step_path']}: {p['steps_done']:,} of {p['planned_steps']:,} planned steps "
            f"({100 * p['done_fraction']:.1f} %)")
    if timed:
        line += f"; step times: {timed}"
    if p["projected_full_s"] is not None:
        line += f"; the full schedule: {p['projected_full_s'] / 60:.1f} min at {1000 * p['step_s']:.1f} ms per step"
    if p["projected_full_s_in_run"] is not None:
        line += (f", {p['projected_full_s_in_run'] / 60:.1f} min at the training's own "
                 f"{1000 * p['in_run_step_s']:.1f} ms per step")
    return line
