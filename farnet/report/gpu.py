"""A GPU run brought home: ``farnet replicate-import`` and the one validating reader of ``results/gpu/``.

``farnet replicate`` (:mod:`farnet.replicate`) runs the paper's protocol on a lent GPU and writes one folder, which
comes back read-only. ``farnet replicate-import <folder>`` checks it and copies its files into
``results/gpu/`` (the run's record, train info, metrics, per-landmark errors, predictions, benchmark, progress
and log; a file an earlier import left there and this folder lacks is removed, so the folder is one run), and
writes the benchmark to ``results/benchmarks/cuda-<device>.json`` beside ``farnet bench``'s reports. Table 3 then
shows the run in a row of its own, with its provenance (:func:`farnet.report.tables.gpu_header`).

``results/gpu/README.md`` is committed and always there: the tables stage depends on the folder, and DVC stops
on a dependency that does not exist. The run counts as present when ``metrics.json`` is there.
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farnet.errors import DataError
from farnet.fileio import read_json_object, write_json
from farnet.report.provenance import UNKNOWN, commit_of_digest
from farnet.report.results import RUN_INFO_KEYS

__all__ = ["GpuRun", "add_arguments", "device_slug", "import_gpu_run", "read_gpu_run", "find_gpu_run", "run"]

GPU_FOLDER = "gpu"
#: the files ``farnet replicate`` writes that a run cannot be shown without
REQUIRED = ("run.json", "train_info.json", "metrics.json")
#: the others it writes (a run stopped early, or with ``--bench-repeats 0``, lacks some), and its log
MISSING = "file not found (every `farnet replicate` folder has it)"
OPTIONAL = ("per_landmark.csv", "predictions.csv", "benchmark.json", "progress.json", "log.txt")
#: what ``run.json`` must state for the row and its provenance, besides the run info of every run of ours
RUN_KEYS = (*RUN_INFO_KEYS, "input_hw", "pretrained", "hardware", "torch", "device", "status", "protocol",
            "replication_gaps")
TEST_SPLITS = ("test1", "test2")


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


def import_gpu_run(source: str | Path, results: str | Path) -> list[Path]:
    """Check ``source`` (:func:`read_gpu_run`), copy its files into ``results/gpu/`` and write its benchmark to
    ``results/benchmarks/cuda-<device>.json``.

    Returns:
        The paths written: the copies, then the benchmark (when the run has one).

    Raises:
        DataError: as :func:`read_gpu_run` and :func:`~farnet.report.tables.check_gpu_run` (a run that is not
            Table 3's), or naming ``source`` when it is not a folder or is ``results/gpu``.
    """
    source, results = Path(source), Path(results)
    target = results / GPU_FOLDER
    if not source.is_dir():
        raise DataError(source, "not a folder (the --out folder of `farnet replicate`)")
    if target.exists() and source.resolve() == target.resolve():
        raise DataError(source, "is the folder it would be imported into")
    from farnet.report.tables import check_gpu_run, load_paper_tables  # here: the tables import this module

    gpu = read_gpu_run(source)  # nothing is copied from a folder that cannot be shown
    check_gpu_run(gpu, load_paper_tables()["table3"])
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (*REQUIRED, *OPTIONAL):
        if name == "run.json" and gpu.run.get("git_commit") == UNKNOWN and gpu.run.get("code_digest"):
            # made without git: named by the commit here whose code it ran, when there is one
            commit = commit_of_digest(gpu.run["code_digest"], Path(__file__).resolve().parents[2])
            gpu.run.update(git_commit=commit or UNKNOWN, git_commit_source=(
                "code digest of the run matched this commit at import" if commit else
                "unknown: the run's code digest matched no clean checkout at import"))
            written.append(write_json(target / name, gpu.run))
        elif (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            written.append(target / name)
        else:  # left by an earlier import: it belongs to another run
            (target / name).unlink(missing_ok=True)
    if gpu.benchmark is not None:
        name = f"cuda-{device_slug(gpu.device_name)}.json"
        written.append(write_json(results / "benchmarks" / name, benchmark_record(gpu)))
    return written


def benchmark_record(gpu: GpuRun) -> dict[str, Any]:
    """The run's ``benchmark.json`` as ``results/benchmarks/`` keeps it: unchanged, with where it came from."""
    run = gpu.run
    origin = {"made_by": "farnet replicate", "imported_by": "farnet replicate-import", "results": "results/gpu",
              "run": run["run"], "git_commit": run["git_commit"], "hardware": run["hardware"],
              "date": run.get("date"), "protocol": run["protocol"]}
    return {**gpu.benchmark, "origin": origin}


def device_slug(name: str) -> str:
    """A device name as a file name, by the rule of ``farnet bench`` (:func:`farnet.bench.report.device_slug`):
    ``"NVIDIA H200"`` → ``"nvidia-h200"``.

    The rule is repeated, not imported: the tables stage reaches this module, and importing ``farnet.bench``
    would make every benchmark change re-run it (tests/test_gpu_import.py checks that the two agree).
    """
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)", "", name.lower())).strip("-")


def method_label(gpu: GpuRun) -> str:
    """Table 3's label of the run, e.g. ``"FARNet (ours, GPU: NVIDIA H200, 45000 steps, REDUCED)"``."""
    reduced = ", REDUCED" if gpu.reduced else ""
    return f"FARNet (ours, GPU: {gpu.device_name}, {gpu.run['steps']} steps{reduced})"


def _require(path: Path, data: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [key for key in dict.fromkeys(keys) if key not in data]
    if missing:
        raise DataError(path, f"missing keys {missing}")


# ----------------------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="the folder `farnet replicate --out` wrote, as it came back")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="the results folder to import into (default: results)")


def run(args: argparse.Namespace) -> int:
    written = import_gpu_run(args.folder, args.results)
    for path in written:
        print(f"wrote {path}")
    left = sorted(p.name for p in args.folder.iterdir() if p.name not in (*REQUIRED, *OPTIONAL))
    if left:
        print(f"not imported (not a file `farnet replicate` writes): {', '.join(left)}")
    print("Table 3 shows the run after `dvc repro tables` (or `python pipelines/tables.py`)")
    return 0
