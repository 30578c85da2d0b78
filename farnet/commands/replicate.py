"""``farnet replicate``: one run of the paper's protocol from a carry, without DVC, into one folder.

One command for a GPU node or cloud box without DVC (torch, torchvision and timm, but neither dvc nor dvclive),
with the carry copied to node-local disk and often a wall-time limit: it trains the run with the train stage's own code
(:func:`farnet.stages.train.train_run`, no dvclive), evaluates Test1 and Test2 with the evaluate stage's own code
(:func:`farnet.stages.evaluate.evaluate_splits`), and measures the device with :mod:`farnet.commands.bench.side_by_side`:
before the run, its training step on each step path (eager, deferred, CUDA graph, torch.compile;
:mod:`farnet.training.steps`), the fastest of which trains; after it, a training step and an inference at several batch
sizes, then 1, 4 and 8 training processes side by side. Every file lands in ``--out`` as soon as it is known,
written atomically (:class:`RunRecord` keeps the run's record, progress and benchmark), so a command killed at any
point leaves what was done:

- ``run.json``: how the run is made (command, carry and its form, device, commit), rewritten at each phase
  (``status``); at the end the evaluate stage's run info, with the protocol it followed or why it is reduced;
- ``progress.json``: steps done, loss and lr, at every training log (each epoch, or every ``log_every_steps``);
- ``train_info.json``: the train stage's, with the ``schedule`` that ran;
- ``metrics.json``, ``per_landmark.csv``, ``predictions.csv``: Test1 as soon as it is measured, then Test2;
- ``benchmark.json``: the step paths' times and the path chosen, the training's own step time, a training step
  and an inference per batch size (batch 1 also as ``train_step`` / ``inference``), the side-by-side step rates.

Parameters: the run's entry of ``params.yaml`` (default ``farnet``) under the paper profile, whatever profile
the file selects, at the carry's input size. A wall-time budget (``--budget-min``) lets the engine fit the
schedule to it after a timed probe (:class:`~farnet.training.budget.TrainBudget`); ``--deadline-min`` gives the whole
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

from farnet.config import Params
from farnet.commands.bench.measure import describe
from farnet.commands.bench.side_by_side import batch_sweep, fastest_path, side_by_side, time_step_paths
from farnet.commands.bench.summary import device_name
from farnet.data.carry import read_carry_info, unpack_carry
from farnet.data.views import read_dataset_info
from farnet.training.budget import TrainBudget
from farnet.commands.protocol import carry_params, input_gap
from farnet.commands.run_record import RunRecord
from farnet.core.errors import ConfigError, TrainingInterrupted
from farnet.core.fastpath import FastPath, default_device, parse_device, resolve
from farnet.core.fileio import read_json_object, write_csv, write_json
from farnet.core import provenance
from farnet.stages.evaluate import evaluate_splits, run_info
from farnet.stages.train import train_run
from farnet.training.steps import STEP_PATHS
from farnet.models.trained import TrainedModel, load_trained_model

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
    budget, plan = _train_budget(args), _measure_plan(args, device)
    with tempfile.TemporaryDirectory(prefix="farnet-replicate-") as scratch:
        summary = replicate(args.carry, args.out, device=device, budget=budget, run_name=args.run,
                            params_path=args.params, input_hw=args.input_hw, work=args.work or Path(scratch),
                            plan=plan, progress=not args.no_progress, model=args.evaluate)
    print(f"{summary['protocol']}; results in {args.out}")
    return summary["exit_code"]


def _train_budget(args: argparse.Namespace) -> TrainBudget | None:
    """The training's budget the options ask for (None: the full schedule, no limit)."""
    if args.budget_min is not None and not args.budget_min > 0:
        raise ConfigError(f"--budget-min: {args.budget_min} must be > 0")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: {args.steps} must be >= 1")
    if args.probe_steps < 2:
        raise ConfigError(f"--probe-steps: {args.probe_steps} must be >= 2")
    if args.deadline_min is not None and not args.deadline_min > 0:
        raise ConfigError(f"--deadline-min: {args.deadline_min} must be > 0")
    if args.budget_min is None and args.steps is None and args.deadline_min is None:
        return None
    return TrainBudget(seconds=None if args.budget_min is None else args.budget_min * 60,
                       max_steps=args.steps, probe_steps=args.probe_steps)


def _measure_plan(args: argparse.Namespace, device: torch.device) -> MeasurePlan:
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
        num_workers=args.num_workers,
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


@dataclass(frozen=True)
class _Job:
    """What the steps of one run share, fixed once its carry is unpacked."""

    params: Params
    device: torch.device
    fast: FastPath  # the training's precision and memory format on this device
    num_landmarks: int
    work: Path  # holds prepared/<dataset> and model/
    plan: MeasurePlan
    progress: bool

    @property
    def prepared(self) -> Path:
        return self.work / "prepared" / self.params.data.dataset


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
    if model is not None:  # checked against the carry before anything runs
        given = load_trained_model(model)
        if given.meta.get("dataset") != info["dataset"]:
            raise ConfigError(f"{model}: trained on {given.meta.get('dataset')!r} ({given.num_landmarks} landmarks), "
                              f"but {carry} holds {info['dataset']!r}")
        input_hw = tuple(given.input_hw)
    params, paper_hw = carry_params(carry, info, params_path, run_name, input_hw, plan.num_workers)
    record = RunRecord(out, _run_fields(run_name, device, info, budget, plan), started)
    job = _unpack(carry, params, device, work, plan, progress)
    record.bench = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
                    "fast_path": job.fast.describe(), "input_hw": list(params.input_hw)}
    trains = model is None
    if trains:
        path = _choose_step_path(record, job)
        model, train_info, exit_code = _train(record, job, path, budget)
    else:  # a model trained before: evaluated on this carry only
        train_info = read_json_object(model.parent / "train_info.json",
                                      f"not found: the train info written beside {model.name} by its training")
        path, exit_code = None, 0
        record.fields.update(evaluated_model=str(model), budget=None)
        job = replace(job, plan=replace(plan, bench_repeats=0, side_by_side=()))
    write_json(out / "train_info.json", train_info)
    trained = load_trained_model(model, num_landmarks=job.num_landmarks)
    _label(record, trained, train_info, job, paper_hw)
    metrics = _evaluate(record, job, trained, train_info)
    if trains:
        record.save_benchmark(in_run=in_run_timing(train_info))
    if job.plan.bench_repeats > 0:
        _benchmark(record, job, trained.model, path)
    if job.plan.side_by_side:
        _side_by_side(record, job, path, carry_hw=tuple(info["input_hw"]), params_path=params_path,
                      input_hw=input_hw)
    record.finish(exit_code)
    return {"protocol": record.fields["protocol"], "metrics": metrics, "exit_code": exit_code}


def _run_fields(run_name: str, device: torch.device, info: dict, budget: TrainBudget | None,
                plan: MeasurePlan) -> dict:
    """How the run is made, as ``run.json`` opens: command, device, code, carry, budget."""
    return {"command": shlex.join(sys.argv), "run": run_name, "device": str(device),
            "hardware": provenance.hardware_description(), "torch": torch.__version__,
            "git_commit": provenance.git_commit(Path.cwd()),
            # where no git is (a working tree copied to a GPU node or cloud box): matched to a commit on import
            "code_digest": provenance.code_digest(Path(__file__).resolve().parents[2]),
            "carry": {k: v for k, v in info.items() if k != "attempts"},
            "budget": _budget_record(budget),
            "deadline_s": plan.deadline_s, "started": datetime.now(UTC).isoformat(timespec="seconds")}


def _unpack(carry: Path, params: Params, device: torch.device, work: Path, plan: MeasurePlan,
            progress: bool) -> _Job:
    """Unpack the carry into ``work/prepared/<dataset>`` and fix what the later steps share."""
    prepared = work / "prepared" / params.data.dataset
    unpack_carry(carry, prepared, progress=progress)
    fast = resolve(params.train.precision, params.train.channels_last, device)
    num_landmarks = len(read_dataset_info(prepared)["landmark_names"])
    return _Job(params, device, fast, num_landmarks, work, plan, progress)


def _choose_step_path(record: RunRecord, job: _Job) -> str:
    """The step path to train on: the only one asked for, or the fastest of those timed (then in the benchmark)."""
    plan = job.plan
    if len(plan.paths) == 1:
        return plan.paths[0]
    record.status("timing step paths")
    timings = time_step_paths(job.params, job.num_landmarks, job.device, job.fast, plan.paths, plan.path_steps,
                              plan.path_warmup, log=_say)
    path = fastest_path(timings)
    record.save_benchmark(step_paths=timings, chosen_path=path)
    return path


def _train(record: RunRecord, job: _Job, path: str, budget: TrainBudget | None) -> tuple[Path, dict, int]:
    """Train the run on ``path`` within what is left of the deadline, logging to ``progress.json``.

    Returns:
        The model file, the train info, and the exit code: 0, or 128 + the signal that stopped the training
        (its model and train info are written all the same).
    """
    record.fields["step_path"] = path
    budget = _fit_deadline(budget, job.plan, record.started)
    record.fields["budget"] = _budget_record(budget)
    record.status("training")
    model = job.work / "model" / "model.pt"
    try:
        train_info = train_run(job.params, job.work / "prepared", model.parent, None, progress=job.progress,
                               budget=budget, log=record.progress_log(), step_path=path)
    except TrainingInterrupted as exc:  # model.pt and train_info.json are written: evaluate what was reached
        print(f"replicate: {exc}", file=sys.stderr)
        return model, json.loads((model.parent / "train_info.json").read_text()), exc.exit_code
    return model, train_info, 0


def _label(record: RunRecord, trained: TrainedModel, train_info: dict, job: _Job, paper_hw: tuple[int, int]) -> None:
    """Add to the run's record how the result was made and its protocol: the paper's, or "REDUCED: " and why."""
    made = run_info(trained.meta["params"], train_info, read_dataset_info(job.prepared))
    gaps = provenance.replication_gaps(made) + input_gap(job.params.input_hw, paper_hw)
    record.fields.update(made, protocol="the paper's protocol" if not gaps else "REDUCED: " + "; ".join(gaps),
                         replication_gaps=gaps)


def _evaluate(record: RunRecord, job: _Job, trained: TrainedModel, train_info: dict) -> dict:
    """Test1, then Test2: metrics, per-landmark errors and predictions, each written as soon as it is measured."""
    record.status("evaluating")
    metrics = {"protocol": record.fields["protocol"], "schedule": train_info["schedule"]}
    tables: dict[str, list[pd.DataFrame]] = {"per_landmark.csv": [], "predictions.csv": []}
    for split in evaluate_splits(job.params, job.prepared, trained, job.device, progress=job.progress):
        metrics.update(split.metrics)
        tables["per_landmark.csv"].append(split.per_landmark)
        tables["predictions.csv"].append(split.predictions)
        for name, frames in tables.items():
            write_csv(record.out / name, pd.concat(frames, ignore_index=True))
        write_json(record.out / "metrics.json", metrics)
    return metrics


def _benchmark(record: RunRecord, job: _Job, network: torch.nn.Module, path: str) -> None:
    """A training step and an inference of the trained network at each batch size; batch 1 as ``farnet bench``
    reports it."""
    plan = job.plan
    record.status("benchmarking")
    bench = record.bench
    bench["batches"] = batch_sweep(network, job.params, job.num_landmarks, job.device, job.fast, path,
                                   plan.bench_batches, plan.bench_repeats, log=_say)
    for what in ("train_step", "inference"):
        if "median_s" in bench["batches"][what].get("1", {}):
            bench[what] = bench["batches"][what]["1"]
    bench["method"] = (f"farnet.commands.bench.measure.timed: median of {plan.bench_repeats} runs after warm-up, "
                       f"device synchronised around each; the step is farnet.training.steps.Stepper on the {path} "
                       "path (EWC, Adam) on the trained model, the inference predict_landmarks (upload, forward, "
                       "argmax, download); step paths: the run's network from its seed, steps back to back")
    record.save_benchmark(summary={what: describe(bench[what]) for what in ("train_step", "inference")
                                   if what in bench})


def _side_by_side(record: RunRecord, job: _Job, path: str, *, carry_hw: tuple[int, int], params_path: str | Path,
                  input_hw: tuple[int, int] | None) -> None:
    """Training processes side by side on the device, on the run's step path (the fastest other one when that is
    torch.compile), into ``benchmark.json``."""
    record.status("side by side")
    others = {k: v for k, v in record.bench.get("step_paths", {}).items() if k != "compile"}
    side_path = path if path != "compile" else fastest_path(others)
    plan = job.plan
    record.save_benchmark(side_by_side=side_by_side(
        plan.side_by_side, carry_hw=carry_hw, prepared_root=job.work / "prepared", work=job.work,
        params_path=params_path, input_hw=input_hw, device=job.device, path=side_path, steps=plan.side_steps,
        warmup=plan.side_warmup, timeout_s=300, log=_say))


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
