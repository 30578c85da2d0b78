"""The options of ``farnet replicate`` and what they ask for: the training's budget and the measurements besides
the run (:class:`MeasurePlan`), each checked and with its default for the device."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from farnet.core.errors import ConfigError
from farnet.training.budget import TrainBudget
from farnet.training.steps import STEP_PATHS

__all__ = ["MeasurePlan", "add_arguments", "measure_plan", "train_budget"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--carry", type=Path, required=True, help="the carry file (`farnet carry build`)")
    parser.add_argument("--out", type=Path, required=True, help="the folder every result is written into")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: FARNET_DEVICE, else CUDA if "
                                                       "available, else CPU)")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="wall-time budget of the training in minutes: a schedule that does not fit is "
                             "shortened (lr drop at 2/3 of it) and reported as reduced (default: none)")
    parser.add_argument("--run", default="farnet", help="the entry of `runs` to train (default: farnet)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--input-hw", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="train and evaluate at this size, resized from the carry's (default: the carry's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="stop after this many training steps (a tiny run for testing; reported as reduced)")
    parser.add_argument("--probe-steps", type=int, default=300,
                        help="steps timed before the schedule is fitted to --budget-min (default: 300)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the unpacked data and the model (default: a temporary folder, removed)")
    parser.add_argument("--bench-repeats", type=int, default=None,
                        help="timed runs per benchmark measurement (default: 20 on CUDA, 2 elsewhere; 0: none)")
    parser.add_argument("--deadline-min", type=float, default=None,
                        help="wall time of the whole command in minutes: the training gets what is left of it at "
                             "its start less --reserve-min (and at most --budget-min)")
    parser.add_argument("--reserve-min", type=float, default=3.0,
                        help="with --deadline-min: the minutes kept for what follows the training (evaluation, "
                             "benchmarks, side-by-side runs; default: 3)")
    parser.add_argument("--paths", default=None,
                        help="step paths to time before training, comma-separated (of eager, deferred, graph, "
                             "compile); the fastest trains. Default: all four on CUDA, eager,deferred elsewhere; "
                             "one path: trained on without timing")
    parser.add_argument("--path-steps", type=int, default=None,
                        help="steps timed per step path (default: 50 on CUDA, 2 elsewhere)")
    parser.add_argument("--bench-batches", default=None,
                        help="batch sizes of the benchmark, comma-separated (default: 1,2,4,8,16 on CUDA, 1 elsewhere)")
    parser.add_argument("--side-by-side", default=None,
                        help="numbers of training processes to run side by side on the device after the run, "
                             "comma-separated (default: 1,4,8 on CUDA, none elsewhere; 0: none)")
    parser.add_argument("--compile-timeout-min", type=float, default=10.0,
                        help="the most minutes torch.compile's timing (in a child process, after the other step "
                             "paths) may take; with --deadline-min at most a quarter of the time then left for it "
                             "and the training (default: 10)")
    parser.add_argument("--side-steps", type=int, default=200,
                        help="timed steps per side-by-side process (default: 200)")
    parser.add_argument("--side-warmup", type=int, default=20,
                        help="steps each side-by-side process takes before the barrier and its timing (default: 20)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data-loading processes of the training (default: the params', 0: the batches are "
                             "slices of a memory-mapped cache, and the engine restarts its workers every epoch)")
    parser.add_argument("--evaluate", type=Path, default=None, metavar="MODEL",
                        help="evaluate this trained model.pt (train_info.json beside it) on the carry instead of "
                             "training one: metrics, per-landmark and prediction files only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def train_budget(args: argparse.Namespace) -> TrainBudget | None:
    """The training's budget the options ask for (None: the full schedule, no limit)."""
    if args.budget_min is not None and not args.budget_min > 0:
        raise ConfigError(f"--budget-min: {args.budget_min} must be > 0")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: {args.steps} must be >= 1")
    if args.probe_steps < 2:
        raise ConfigError(f"--probe-steps: {args.probe_steps} must be >= 2")
    if args.deadline_min is not None and not args.deadline_min > 0:
        raise ConfigError(f"--deadline-min: {args.deadline_min} must be > 0")
    if not args.compile_timeout_min > 0:
        raise ConfigError(f"--compile-timeout-min: {args.compile_timeout_min} must be > 0")
    if args.budget_min is None and args.steps is None and args.deadline_min is None:
        return None
    return TrainBudget(seconds=None if args.budget_min is None else args.budget_min * 60,
                       max_steps=args.steps, probe_steps=args.probe_steps)


def measure_plan(args: argparse.Namespace, device: torch.device) -> MeasurePlan:
    """What the options ask to measure besides the run, with each default for the device (``add_arguments``)."""
    cuda = device.type == "cuda"
    repeats = args.bench_repeats if args.bench_repeats is not None else (20 if cuda else 2)
    return MeasurePlan(
        paths=_names(args.paths, "--paths") if args.paths else (STEP_PATHS if cuda else ("eager", "deferred")),
        path_steps=args.path_steps or (50 if cuda else 2), path_warmup=5 if cuda else 1, bench_repeats=repeats,
        bench_batches=(_counts(args.bench_batches, "--bench-batches") if args.bench_batches
                       else (1, 2, 4, 8, 16) if cuda else (1,)),
        side_by_side=(_counts(args.side_by_side, "--side-by-side", zero=True) if args.side_by_side
                      else (1, 4, 8) if cuda else ()),
        side_steps=args.side_steps, side_warmup=args.side_warmup,
        num_workers=args.num_workers, compile_timeout_s=args.compile_timeout_min * 60,
        deadline_s=None if args.deadline_min is None else args.deadline_min * 60, reserve_s=args.reserve_min * 60)


@dataclass(frozen=True)
class MeasurePlan:
    """What ``farnet replicate`` measures besides the run, and the time it keeps for that (see ``add_arguments``)."""

    paths: tuple[str, ...] = ("eager",)  # step paths timed before the run; the fastest trains
    path_steps: int = 2
    path_warmup: int = 1  # steps before a path's timing (with its capture or compilation)
    bench_repeats: int = 2  # 0: no benchmark after the run
    bench_batches: tuple[int, ...] = (1,)
    side_by_side: tuple[int, ...] = ()
    side_steps: int = 200
    side_warmup: int = 20
    num_workers: int | None = None  # the training's data-loading processes (None: the params')
    compile_timeout_s: float = 600.0  # the most torch.compile's timing may take (less under a deadline)
    deadline_s: float | None = None  # of the whole command
    reserve_s: float = 180.0  # kept for what follows the training, under a deadline


def _names(text: str, option: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in names if x not in STEP_PATHS]
    if not names or unknown:
        raise ConfigError(f"{option}: {text!r}: give step paths of {', '.join(STEP_PATHS)}, comma-separated")
    return names


def _counts(text: str, option: str, zero: bool = False) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        counts = ()
    if zero and counts == (0,):
        return ()
    if not counts or min(counts) < 1:
        raise ConfigError(f"{option}: {text!r}: give positive whole numbers, comma-separated")
    return counts
