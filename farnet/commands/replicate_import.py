"""``farnet replicate-import <folder>``: a ``farnet replicate`` folder, copied back from the GPU node or cloud box.

It checks the folder (:func:`farnet.report.gpu.read_gpu_run`, and that it is Table 3's protocol), copies its
files into ``results/gpu/`` (the run's record, train info, metrics, per-landmark errors, predictions, benchmark,
progress and log; a file an earlier import left there and this folder lacks is removed, so the folder is one run),
and writes the benchmark to ``results/benchmarks/cuda-<device>.json`` beside ``farnet bench``'s reports. Table 3
then shows the run in a row of its own, with its provenance (:func:`farnet.report.tables.gpu_header`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from farnet.core.errors import DataError
from farnet.core.fileio import device_slug, write_json
from farnet.report.gpu import GPU_FOLDER, OPTIONAL, REQUIRED, benchmark_record, read_gpu_run
from farnet.core.provenance import CODE_ROOT, UNKNOWN, commit_of_digest
from farnet.report.tables import check_gpu_run, load_paper_tables


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
    gpu = read_gpu_run(source)  # nothing is copied from a folder that cannot be shown
    check_gpu_run(gpu, load_paper_tables()["table3"])
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (*REQUIRED, *OPTIONAL):
        if name == "run.json" and gpu.run.get("git_commit") == UNKNOWN and gpu.run.get("code_digest"):
            # made without git: named by the commit here whose code it ran, when there is one
            commit = commit_of_digest(gpu.run["code_digest"], CODE_ROOT)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="the folder `farnet replicate --out` wrote, copied back as it is")
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
