"""``farnet replicate``: one run of the paper's protocol from a carry, without DVC, into one folder.

Made for a machine lent for one command (a GPU with torch, torchvision and timm but neither dvc nor dvclive, a
time limit, files back from one folder only): it trains the run with the train stage's own code
(:func:`farnet.stages.train.train_run`, no dvclive), evaluates Test1 and Test2 with the evaluate stage's own code
(:func:`farnet.stages.evaluate.evaluate_splits`), and measures the device with :mod:`farnet.commands.bench.side_by_side`:
before the run, its training step on each step path (eager, deferred, CUDA graph, torch.compile;
:mod:`farnet.training.steps`), the fastest of which trains; after it, a training step and an inference at several batch
sizes, then 1, 4 and 8 training processes side by side. Every file lands in ``--out`` as soon as it is known,
written atomically, so a command killed at any point leaves what was done:

- ``run.json``: how the run is made (command, carry and its form, device, commit), rewritten at each phase
  (``status``); at the end the evaluate stage's run info, with the protocol it followed or why it is reduced;
- ``progress.json``: steps done, loss and lr, at every training log (each epoch, or every ``log_every_steps``);
- ``train_info.json``: the train stage's, with the ``schedule`` that ran;
- ``metrics.json``, ``per_landmark.csv``, ``predictions.csv``: Test1 as soon as it is measured, then Test2;
- ``benchmark.json``: the step paths' times and the path chosen, the training's own step time, a training step
  and an inference per batch size (batch 1 also as ``train_step`` / ``inference``), the side-by-side step rates.

Parameters: the run's entry of ``params.yaml`` (default ``farnet``) under the paper profile, whatever profile
the file selects, at the carry's input size. A wall-time budget (``--budget-min``) lets the engine fit the
schedule to it after a timed probe (:class:`~farnet.training.engine.TrainBudget`); ``--deadline-min`` gives the whole
command a wall time, of which the training gets what is left at its start less ``--reserve-min``. A shortened
schedule is reported as such ("REDUCED: reduced schedule …"), never labelled the paper's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch

from farnet.commands.bench.measure import describe
from farnet.commands.bench.side_by_side import batch_sweep, fastest_path, side_by_side, time_step_paths
from farnet.commands.bench.summary import device_name
from farnet.data.carry import read_carry_info, unpack_carry
from farnet.data.views import read_dataset_info
from farnet.training.engine import TrainBudget
from farnet.commands.protocol import input_gap, replication_params
from farnet.core.errors import ConfigError, TrainingInterrupted
from farnet.core.fastpath import default_device, parse_device, resolve
from farnet.core.fileio import read_json_object, write_csv, write_json
from farnet.core import provenance
from farnet.stages.evaluate import evaluate_splits, run_info
from farnet.stages.train import train_run
from farnet.training.steps import STEP_PATHS
from farnet.models.trained import load_trained_model

__all__ = ["add_arguments", "run", "replicate"]


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


def run(args: argparse.Namespace) -> int:
    device = parse_device(args.device) if args.device else default_device()
    os.environ["FARNET_DEVICE"] = str(device)  # the device the train stage's process setup picks
    if args.budget_min is not None and not args.budget_min > 0:
        raise ConfigError(f"--budget-min: {args.budget_min} must be > 0")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: {args.steps} must be >= 1")
    if args.probe_steps < 2:
        raise ConfigError(f"--probe-steps: {args.probe_steps} must be >= 2")
    if args.deadline_min is not None and not args.deadline_min > 0:
        raise ConfigError(f"--deadline-min: {args.deadline_min} must be > 0")
    budget = None
    if args.budget_min is not None or args.steps is not None or args.deadline_min is not None:
        budget = TrainBudget(seconds=None if args.budget_min is None else args.budget_min * 60,
                             max_steps=args.steps, probe_steps=args.probe_steps)
    cuda = device.type == "cuda"
    repeats = args.bench_repeats if args.bench_repeats is not None else (20 if cuda else 2)
    plan = MeasurePlan(
        paths=_names(args.paths, "--paths") if args.paths else (STEP_PATHS if cuda else ("eager", "deferred")),
        path_steps=args.path_steps or (50 if cuda else 2), path_warmup=5 if cuda else 1, bench_repeats=repeats,
        bench_batches=(_counts(args.bench_batches, "--bench-batches") if args.bench_batches
                       else (1, 2, 4, 8, 16) if cuda else (1,)),
        side_by_side=(_counts(args.side_by_side, "--side-by-side", zero=True) if args.side_by_side
                      else (1, 4, 8) if cuda else ()),
        side_steps=args.side_steps, side_warmup=args.side_warmup,
        num_workers=args.num_workers,
        deadline_s=None if args.deadline_min is None else args.deadline_min * 60, reserve_s=args.reserve_min * 60)
    with tempfile.TemporaryDirectory(prefix="farnet-replicate-") as scratch:
        summary = replicate(args.carry, args.out, device=device, budget=budget, run_name=args.run,
                            params_path=args.params, input_hw=args.input_hw, work=args.work or Path(scratch),
                            plan=plan, progress=not args.no_progress, model=args.evaluate)
    print(f"{summary['protocol']}; results in {args.out}")
    return summary["exit_code"]


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


def replicate(carry: Path, out: Path, *, device: torch.device, budget: TrainBudget | None = None,
              run_name: str = "farnet", params_path: str | Path = "params.yaml",
              input_hw: tuple[int, int] | None = None, work: Path, plan: MeasurePlan = MeasurePlan(),
              progress: bool = True, model: Path | None = None) -> dict:
    """Train, evaluate and benchmark one run from ``carry``, writing into ``out`` as it goes (module text).

    With ``model`` (a ``model.pt`` with its ``train_info.json`` beside it) nothing is trained or benchmarked: that
    model is evaluated on the carry's test sets at its own input size (e.g. one model on two forms of a carry).

    Returns:
        ``protocol`` (the paper's, or "REDUCED: " and why), ``metrics`` and ``exit_code`` (0, or 128 + the signal
        that stopped the training; the model it had reached is evaluated all the same).
    """
    started = time.perf_counter()
    info = read_carry_info(carry)
    if model is not None:
        input_hw = tuple(load_trained_model(model).input_hw)
    params, paper_hw = replication_params(params_path, run_name, tuple(info["input_hw"]), input_hw)
    if info["dataset"] != params.data.dataset:
        raise ConfigError(f"{carry}: holds {info['dataset']}, but run {run_name!r} trains on {params.data.dataset}")
    if plan.num_workers is not None:
        params = replace(params, train=replace(params.train, num_workers=plan.num_workers))
    record = {"status": "unpacking", "command": shlex.join(sys.argv), "run": run_name, "device": str(device),
              "hardware": provenance.hardware_description(), "torch": torch.__version__,
              "git_commit": provenance.git_commit(Path.cwd()),
              # where no git is (a working tree sent to a lent machine): matched to a commit on import
              "code_digest": provenance.code_digest(Path(__file__).resolve().parents[2]),
              "carry": {k: v for k, v in info.items() if k != "attempts"},
              "budget": _budget_record(budget),
              "deadline_s": plan.deadline_s, "started": datetime.now(UTC).isoformat(timespec="seconds")}
    write_json(out / "run.json", record)
    prepared = work / "prepared" / params.data.dataset
    unpack_carry(carry, prepared, progress=progress)
    fast = resolve(params.train.precision, params.train.channels_last, device)
    num_landmarks = len(read_dataset_info(prepared)["landmark_names"])
    bench = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
             "fast_path": fast.describe(), "input_hw": list(params.input_hw)}
    exit_code = 0
    if model is None:
        path = plan.paths[0]
        if len(plan.paths) > 1:
            write_json(out / "run.json", {**record, "status": "timing step paths"})
            bench["step_paths"] = time_step_paths(params, num_landmarks, device, fast, plan.paths, plan.path_steps,
                                                  plan.path_warmup, log=_say)
            path = bench["chosen_path"] = fastest_path(bench["step_paths"])
            write_json(out / "benchmark.json", bench)
        record["step_path"] = path
        budget = _fit_deadline(budget, plan, started)
        record["budget"] = _budget_record(budget)
        write_json(out / "run.json", {**record, "status": "training"})
        model = work / "model" / "model.pt"
        try:
            train_info = train_run(params, work / "prepared", model.parent, None, progress=progress, budget=budget,
                                   log=_progress_writer(out / "progress.json", started), step_path=path)
        except TrainingInterrupted as exc:  # model.pt and train_info.json are written: evaluate what was reached
            print(f"replicate: {exc}", file=sys.stderr)
            train_info, exit_code = json.loads((model.parent / "train_info.json").read_text()), exc.exit_code
    else:  # a model trained before: evaluated on this carry only
        train_info = read_json_object(model.parent / "train_info.json",
                                      f"not found: the train info written beside {model.name} by its training")
        record.update(evaluated_model=str(model), budget=None)
        plan = replace(plan, bench_repeats=0, side_by_side=())
    write_json(out / "train_info.json", train_info)
    trained = load_trained_model(model)
    made = run_info(trained.meta["params"], train_info, read_dataset_info(prepared))
    gaps = provenance.replication_gaps(made) + input_gap(params.input_hw, paper_hw)
    record.update(made, protocol="the paper's protocol" if not gaps else "REDUCED: " + "; ".join(gaps),
                  replication_gaps=gaps)
    write_json(out / "run.json", {**record, "status": "evaluating"})
    metrics = {"protocol": record["protocol"], "schedule": train_info["schedule"]}
    tables: dict[str, list[pd.DataFrame]] = {"per_landmark.csv": [], "predictions.csv": []}
    for split in evaluate_splits(params, prepared, trained, device, progress=progress):  # Test1, then Test2
        metrics.update(split.metrics)
        tables["per_landmark.csv"].append(split.per_landmark)
        tables["predictions.csv"].append(split.predictions)
        for name, frames in tables.items():
            write_csv(out / name, pd.concat(frames, ignore_index=True))
        write_json(out / "metrics.json", metrics)
    if "evaluated_model" not in record:
        bench["in_run"] = in_run_timing(train_info)
        write_json(out / "benchmark.json", bench)
    if plan.bench_repeats > 0:
        write_json(out / "run.json", {**record, "status": "benchmarking"})
        bench["batches"] = batch_sweep(trained.model, params, num_landmarks, device, fast, path, plan.bench_batches,
                                       plan.bench_repeats, log=_say)
        for what in ("train_step", "inference"):  # batch 1, as `farnet bench` reports it
            if "median_s" in bench["batches"][what].get("1", {}):
                bench[what] = bench["batches"][what]["1"]
        bench["method"] = (f"farnet.commands.bench.measure.timed: median of {plan.bench_repeats} runs after warm-up, device "
                           f"synchronised around each; the step is farnet.training.steps.Stepper on the {path} path (EWC, "
                           "Adam) on the trained model, the inference predict_landmarks (upload, forward, argmax, "
                           "download); step paths: the run's network from its seed, steps back to back")
        bench["summary"] = {what: describe(bench[what]) for what in ("train_step", "inference") if what in bench}
        write_json(out / "benchmark.json", bench)
    if plan.side_by_side:
        write_json(out / "run.json", {**record, "status": "side by side"})
        side_path = path if path != "compile" else fastest_path({k: v for k, v in bench.get("step_paths", {}).items()
                                                                 if k != "compile"})
        bench["side_by_side"] = side_by_side(
            plan.side_by_side, carry_hw=tuple(info["input_hw"]), prepared_root=work / "prepared", work=work,
            params_path=params_path, input_hw=input_hw, device=device, path=side_path, steps=plan.side_steps,
            warmup=plan.side_warmup, timeout_s=300, log=_say)
        write_json(out / "benchmark.json", bench)
    write_json(out / "run.json", {**record, "status": "done" if exit_code == 0 else "interrupted",
                                  "wall_s": round(time.perf_counter() - started, 1)})
    return {"protocol": record["protocol"], "metrics": metrics, "exit_code": exit_code}


def _fit_deadline(budget: TrainBudget | None, plan: MeasurePlan, started: float) -> TrainBudget | None:
    """The training's budget under the command's deadline: what is left of it less the reserve (at least a
    minute), or the budget's own seconds when fewer."""
    if plan.deadline_s is None:
        return budget
    left = max(60.0, plan.deadline_s - (time.perf_counter() - started) - plan.reserve_s)
    budget = budget or TrainBudget()
    return replace(budget, seconds=left if budget.seconds is None else min(budget.seconds, left))


def _budget_record(budget: TrainBudget | None) -> dict | None:
    return None if budget is None else {"seconds": budget.seconds, "max_steps": budget.max_steps,
                                        "probe_steps": budget.probe_steps}


def _say(message: str) -> None:
    print(f"replicate: {message}", file=sys.stderr, flush=True)


def in_run_timing(train_info: dict) -> dict:
    """The step time the training itself achieved (data loading and logging included) and its probe's."""
    steps, wall_s = train_info["steps"], train_info["train_wall_s"]
    return {"steps": steps, "train_wall_s": wall_s, "mean_step_s": wall_s / steps if steps else None,
            "probe_step_s": train_info["schedule"].get("probe_step_s"), "step_path": train_info.get("step_path"),
            "method": "the training itself: wall time of its epochs (data loading and logging included) over its "
                      "steps; the probe: the second half of the budget's probe steps"}


def _progress_writer(path: Path, started: float):
    """The training log as ``progress.json``: the last values logged, the steps done and the time since start."""
    def log(step: int, values: dict) -> None:
        write_json(path, {"steps_done": step, "elapsed_s": round(time.perf_counter() - started, 1), **values})

    return log
