"""The record ``farnet replicate`` keeps of its run in its ``--out`` folder: ``run.json``, ``progress.json`` and
``benchmark.json``, each rewritten atomically as soon as it changes, so a command killed at any point leaves what
was done (:mod:`farnet.commands.replicate`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from farnet.core.fileio import write_json
from farnet.report.gpu import file_manifest


class RunRecord:
    """The run's own files in ``out``, each rewritten atomically as soon as it changes (module text): ``run.json``
    (how the run is made, with the phase it has reached), ``progress.json`` (the training's last log) and
    ``benchmark.json``.

    Attributes:
        out: the folder every result is written into.
        fields: what ``run.json`` says; its ``status`` is the first phase, each write gives the current one.
        bench: what ``benchmark.json`` says.
        started: when the command started (``time.perf_counter``).
    """

    def __init__(self, out: Path, fields: dict, started: float):
        self.out, self.started = out, started
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

    def progress_log(self) -> Callable[[int, dict], None]:
        """The training log as ``progress.json``: the last values logged, the steps done and the time since start."""
        def log(step: int, values: dict) -> None:
            write_json(self.out / "progress.json",
                       {"steps_done": step, "elapsed_s": round(time.perf_counter() - self.started, 1), **values})

        return log

    def finish(self, exit_code: int) -> None:
        """The last ``run.json``: done, or interrupted (the model reached was evaluated), the wall time and the
        sha256 of every file the run wrote (``farnet replicate-import`` imports only files that match them)."""
        self.status("done" if exit_code == 0 else "interrupted", wall_s=round(time.perf_counter() - self.started, 1),
                    files=file_manifest(self.out))
