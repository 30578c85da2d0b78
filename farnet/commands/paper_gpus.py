"""``farnet paper-gpus``: the paper's pipeline with its trainings side by side on a node's GPUs.

    farnet paper-gpus --gpus 8 [--share K/N] [--train-only]      (`make paper-gpus GPUS=8`; run in the project)

`dvc repro` trains the 24 runs one after another on one GPU. This command runs the same pipeline in four steps
(docs/gpu-node.md):

1. `dvc repro prepare`: resolve, source, fetch and prepare every dataset.
2. The train stages that `dvc status` reports as changed, `--gpus` at a time, each by its own command from
   dvc.yaml (so it trains exactly what `dvc repro` would, and resumes an interrupted run the same way). Each takes
   a free GPU and keeps it to its end (farnet.core.devices); its output goes to `models/<run>/train.log`.
3. `dvc commit train@<run>` as each one finishes: DVC records its outputs as that stage's, as `dvc repro` would
   have; a run that fails is reported, left uncommitted, and the others go on.
4. `dvc repro`: evaluates every run, then the tables and the plots.

`--share K/N` trains the K-th of N shares of the train stages (every N-th in dvc.yaml's order): one share per node
when nodes share the workspace; `--train-only` skips steps 1 and 4 there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from farnet.core.errors import ConfigError, FarnetError

__all__ = ["add_arguments", "run", "paper_gpus"]


@dataclass(frozen=True)
class Training:
    """One train stage: ``stage`` is ``train@<run>``; ``cmd`` its shell command from dvc.yaml."""

    stage: str
    cmd: str

    @property
    def run(self) -> str:
        return self.stage.split("@", 1)[1]


def parse_share(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--share {text!r} is not K/N (e.g. 2/3)") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"--share {text!r}: K must be in 1..N")
    return k, n


def share_of(trainings: Sequence[Training], share: tuple[int, int]) -> list[Training]:
    """The K-th of N shares: every N-th training from the K-th, so long and short runs spread over the shares."""
    k, n = share
    return list(trainings[k - 1::n])


def changed(trainings: Sequence[Training], status: dict) -> list[Training]:
    """The trainings that ``dvc status --json`` (``status``) lists: not yet trained with today's deps and params."""
    return [t for t in trainings if t.stage in status]


def dvc(*args: str) -> list[str]:
    """A dvc command line that waits for DVC's repository lock instead of failing (several nodes may commit)."""
    return [str(Path(sys.executable).parent / "dvc"), "--wait-for-lock", *args]


def train_stages(root: Path) -> list[Training]:
    """Every ``train@<run>`` stage of dvc.yaml, in its order, with its command as DVC renders it."""
    from dvc.repo import Repo  # DVC's own reading of dvc.yaml (foreach, ${key}); imported here: slow to import

    with Repo(str(root)) as repo:
        return [Training(stage.name, stage.cmd) for stage in repo.stage.collect(f"{root / 'dvc.yaml'}:train")]


def _environment() -> dict[str, str]:
    """Stage commands call ``python``: this interpreter's environment first on PATH, as the Makefile does."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _check(args: list[str], root: Path) -> str:
    result = subprocess.run(args, cwd=root, env=_environment(), stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise FarnetError(f"`{' '.join(args)}` failed (exit {result.returncode})")
    return result.stdout


def _train(training: Training, root: Path) -> int:
    log = root / "models" / training.run / "train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.run(training.cmd, shell=True, cwd=root, env=_environment(), stdout=out,
                              stderr=subprocess.STDOUT).returncode


def train_side_by_side(trainings: Sequence[Training], gpus: int, root: Path) -> list[str]:
    """Train ``trainings``, ``gpus`` at a time, committing each one that ends well; the stages that failed."""
    failed: list[str] = []
    with ThreadPoolExecutor(max_workers=gpus) as pool:
        _say(f"{len(trainings)} trainings, {gpus} at a time; follow one with "
             f"`tail -f models/<run>/train.log`, the GPUs with `nvidia-smi`")
        running: dict[Future, tuple[Training, float]] = {}
        for training in trainings:
            running[pool.submit(_train, training, root)] = (training, time.monotonic())
        finished = 0
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                training, started = running.pop(future)
                finished += 1
                hours = (time.monotonic() - started) / 3600
                code = future.result()
                if code == 0:
                    _check(dvc("commit", "--force", "--quiet", training.stage), root)
                    _say(f"{finished}/{len(trainings)} {training.stage} trained and committed ({hours:.1f} h)")
                else:
                    failed.append(training.stage)
                    _say(f"{finished}/{len(trainings)} {training.stage} FAILED (exit {code}): "
                         f"models/{training.run}/train.log")
    return failed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", type=int, required=True, help="trainings at a time: the node's GPUs")
    parser.add_argument("--share", type=parse_share, default=(1, 1), help="K/N: this node's share of the runs")
    parser.add_argument("--train-only", action="store_true", help="train (and commit) only: no prepare, no repro")


def run(args: argparse.Namespace) -> int:
    if args.gpus < 1:
        raise ConfigError(f"--gpus {args.gpus}: at least 1 (`make paper-gpus` counts the GPUs with "
                          "`nvidia-smi -L`; set GPUS=N)")
    return paper_gpus(args.gpus, args.share, train_only=args.train_only, root=Path.cwd())


def paper_gpus(gpus: int, share: tuple[int, int] = (1, 1), *, train_only: bool = False, root: Path) -> int:
    """The four steps of the module text in the project at ``root``; 1 when a training failed (not committed)."""
    if not train_only:
        _check(dvc("repro", "prepare"), root)
    mine = share_of(train_stages(root), share)
    status = json.loads(_check(dvc("status", "--json", *(t.stage for t in mine)), root) or "{}")
    todo = changed(mine, status)
    _say(f"train stages of share {share[0]}/{share[1]}: {len(mine)}, up to date {len(mine) - len(todo)}, "
         f"to train {len(todo)}")
    failed = train_side_by_side(todo, gpus, root) if todo else []
    if failed:
        _say(f"not committed, re-run to resume them: {' '.join(failed)}")
        return 1
    if not train_only:
        _check(dvc("repro"), root)
    return 0
