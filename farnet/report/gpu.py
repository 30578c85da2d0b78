"""A GPU run imported: the one validating reader of ``results/gpu/`` (written by ``farnet replicate-import``,
:mod:`farnet.commands.replicate_import`).

``farnet replicate`` (:mod:`farnet.commands.replicate`) is one command that runs the paper's protocol on a GPU node
or cloud box without DVC and writes one folder; copied back here, ``farnet replicate-import <folder>`` checks it
and copies its files into ``results/gpu/`` (the run's record, train info, metrics, per-landmark errors,
predictions, benchmark, progress and log; a file an earlier import left there and this folder lacks is removed,
so the folder is one run), and writes the benchmark to ``results/benchmarks/cuda-<device>.json`` beside
``farnet bench``'s reports. Table 3 then shows the run in a row of its own, with its provenance
(:func:`farnet.report.headers.gpu_header`).

``results/gpu/README.md`` is committed and always there: the tables stage depends on the folder, and DVC stops
on a dependency that does not exist. The run counts as present when ``metrics.json`` is there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farnet.core.errors import DataError
from farnet.core.fileio import read_json_object
from farnet.data.manifest import sha256_file
from farnet.report.results import RUN_INFO_KEYS, TEST_SPLITS

__all__ = ["GpuRun", "benchmark_record", "find_gpu_run", "method_label", "read_gpu_run"]

GPU_FOLDER = "gpu"
#: the files ``farnet replicate`` writes that a run cannot be shown without
REQUIRED = ("run.json", "train_info.json", "metrics.json")
#: the others it writes (a run stopped early, or with ``--bench-repeats 0``, lacks some), and its log
MISSING = "file not found (every `farnet replicate` folder has it)"
OPTIONAL = ("per_landmark.csv", "predictions.csv", "benchmark.json", "progress.json", "log.txt")
#: what ``run.json`` must state for the row and its provenance, besides the run info of every run of ours
RUN_KEYS = (*RUN_INFO_KEYS, "input_hw", "pretrained", "hardware", "torch", "device", "status", "protocol",
            "replication_gaps")


#: the files of a run that its finished ``run.json`` lists with their sha256 (``files``): ``run.json`` itself is
#: rewritten on import and ``log.txt`` is written by the shell around the command
LISTED = tuple(name for name in (*REQUIRED, *OPTIONAL) if name not in ("run.json", "log.txt"))
FINISHED = ("done", "interrupted")  # the statuses ``farnet replicate`` ends with (interrupted: evaluated all the same)


def file_manifest(folder: str | Path) -> dict[str, str]:
    """The sha256 of each of :data:`LISTED` present in ``folder``: what a finished run lists in ``run.json``."""
    return {name: sha256_file(Path(folder) / name) for name in LISTED if (Path(folder) / name).is_file()}


def _check_one_finished_run(folder: Path, run: dict) -> None:
    """DataError unless ``run.json`` says the run finished and every file beside it is one it lists, unchanged:
    a second run killed in the same folder leaves its own ``run.json`` beside the first run's results."""
    if run.get("status") not in FINISHED:
        raise DataError(folder / "run.json", f"status {run.get('status')!r}: the run did not finish, so the files "
                                             "beside it may be another run's; run `farnet replicate` again")
    listed = run.get("files")
    if not isinstance(listed, Mapping):
        raise DataError(folder / "run.json", "lists no files: made by a `farnet replicate` that did not record them")
    present = file_manifest(folder)
    for name in sorted(set(listed) | set(present)):
        if listed.get(name) != present.get(name):
            why = "missing" if name not in present else "not listed" if name not in listed else "changed"
            raise DataError(folder / name, f"{why}: not the file the finished run in run.json wrote (files of two "
                                           "runs in one folder?)")


@dataclass(frozen=True)
class GpuRun:
    """One ``farnet replicate`` folder, read and checked.

    Attributes:
        folder: where it was read.
        run: ``run.json``: the evaluate stage's run info, the carry, the protocol followed or why it is reduced.
        train_info: ``train_info.json``: the train stage's, with its ``schedule``.
        metrics: ``metrics.json``: Test1 and Test2 keyed as ``results/metrics/<run>.json`` keys them.
        benchmark: ``benchmark.json``, None when the run did not time a step.
    """

    folder: Path
    run: dict[str, Any]
    train_info: dict[str, Any]
    metrics: dict[str, Any]
    benchmark: dict[str, Any] | None

    @property
    def device_name(self) -> str:
        """The GPU's name (``benchmark.json``), else the device the run names (e.g. ``cuda``)."""
        return self.benchmark["device_name"] if self.benchmark else str(self.run["device"])

    @property
    def reduced(self) -> bool:
        return bool(self.run["replication_gaps"])


def read_gpu_run(folder: str | Path) -> GpuRun:
    """Read and check a ``farnet replicate`` folder.

    Raises:
        DataError: naming the file, when a required one is missing or not a JSON object, ``run.json`` lacks a key
            of :data:`RUN_KEYS`, ``metrics.json`` lacks Test1 or Test2, ``train_info.json`` lacks its schedule or
            disagrees with ``run.json`` on the steps, or ``benchmark.json`` names no device.
    """
    folder = Path(folder)
    run, train_info, metrics = (read_json_object(folder / name, MISSING) for name in REQUIRED)
    _check_one_finished_run(folder, run)
    _require(folder / "run.json", run, RUN_KEYS)
    _require(folder / "train_info.json", train_info, ("steps", "schedule", "train_wall_s"))
    if train_info["steps"] != run["steps"]:
        raise DataError(folder / "train_info.json", f"{train_info['steps']} steps, but run.json says {run['steps']}: "
                                                    "files of two runs")
    for split in TEST_SPLITS:
        summary = metrics.get(split)
        if not isinstance(summary, Mapping) or not {"mre_mm", "sdr"} <= set(summary):
            raise DataError(folder / "metrics.json", f"no {split} summary with mre_mm and sdr (has {sorted(metrics)}):"
                                                     " the run stopped before evaluating it")
    benchmark = None
    if (folder / "benchmark.json").exists():
        benchmark = read_json_object(folder / "benchmark.json", MISSING)
        _require(folder / "benchmark.json", benchmark, ("device_name", "torch", "fast_path"))
    return GpuRun(folder, run, train_info, metrics, benchmark)


def find_gpu_run(results: str | Path) -> GpuRun | None:
    """The run in ``results/gpu/``; None when none was imported (no file of :data:`REQUIRED` there).

    Raises:
        DataError: as :func:`read_gpu_run`, for a folder holding part of a run.
    """
    folder = Path(results) / GPU_FOLDER
    if not any((folder / name).exists() for name in REQUIRED):
        return None
    return read_gpu_run(folder)


def benchmark_record(gpu: GpuRun) -> dict[str, Any]:
    """The run's ``benchmark.json`` as ``results/benchmarks/`` keeps it: unchanged, with where it came from."""
    run = gpu.run
    origin = {"made_by": "farnet replicate", "imported_by": "farnet replicate-import", "results": "results/gpu",
              "run": run["run"], "git_commit": run["git_commit"], "hardware": run["hardware"],
              "date": run.get("date"), "protocol": run["protocol"]}
    return {**gpu.benchmark, "origin": origin}


def method_label(gpu: GpuRun) -> str:
    """Table 3's label of the run, e.g. ``"FARNet (ours, GPU: NVIDIA H200, 45000 steps, REDUCED)"``."""
    reduced = ", REDUCED" if gpu.reduced else ""
    return f"FARNet (ours, GPU: {gpu.device_name}, {gpu.run['steps']} steps{reduced})"


def _require(path: Path, data: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [key for key in dict.fromkeys(keys) if key not in data]
    if missing:
        raise DataError(path, f"missing keys {missing}")
