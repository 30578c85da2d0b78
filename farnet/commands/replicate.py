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
- ``benchmark.json``: the step paths' times and the path chosen, the training's own step time, the schedule's
  projection (steps planned and done, the full schedule's wall time at the step times measured), a training step
  and an inference per batch size (batch 1 also as ``train_step`` / ``inference``), the side-by-side step rates,
  rewritten after each batch size and each round; what was skipped for lack of time (``skipped``) and a step
  path that failed in training (``fallback``).

Parameters: the run's entry of ``params.yaml`` (default ``farnet``) under the paper profile, whatever profile
the file selects, at the carry's input size. A wall-time budget (``--budget-min``) lets the engine fit the
schedule to it after a timed probe (:class:`~farnet.training.budget.TrainBudget`); ``--deadline-min`` gives the whole
command a wall time, counted from its start (before the allocator's re-execution and the imports:
:func:`~farnet.core.allocator.command_started_at`). The training gets what is left at its start less
``--reserve-min``; torch.compile's timing, the evaluation's second split, each batch size and each side-by-side
round get what is left when their turn comes, and what does not fit is recorded as skipped with the reason. A
step path that fails in the training (a capture, a compiler, a diverged loss) is replaced once by the deferred
path (eager when deferred failed), in the time left. A shortened schedule is reported as such ("REDUCED: reduced
schedule …"), never labelled the paper's, with the step times measured, the projected wall time of the full
schedule and the share of it that ran (:func:`schedule_projection`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from farnet.core.errors import ConfigError

#: what ``farnet replicate`` needs to run (pyproject.toml): the Python version, and module -> pip package
REQUIRED_PYTHON = (3, 11)
REQUIRED_MODULES = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "numpy": "numpy",
                    "pandas": "pandas", "PIL": "pillow", "yaml": "pyyaml", "tqdm": "tqdm"}


def check_environment(version: tuple[int, ...] = tuple(sys.version_info),
                      find: Callable[[str], object] = importlib.util.find_spec) -> None:
    """Fail at once, in one line, where this Python cannot run the command (a GPU image's interpreter is
    often older, or lacks a module), instead of a traceback in the middle of an import or of the run.

    Raises:
        ConfigError: naming the Python version needed and every missing module with its pip package.
    """
    problems = []
    if tuple(version[:2]) < REQUIRED_PYTHON:
        problems.append(f"Python >= {'.'.join(map(str, REQUIRED_PYTHON))} is needed, this is "
                        f"{'.'.join(map(str, version[:3]))} ({sys.executable})")
    missing = [pip for module, pip in REQUIRED_MODULES.items() if find(module) is None]
    if missing:
        problems.append(f"missing modules: pip install {' '.join(missing)}")
    if problems:
        raise ConfigError("this environment cannot run farnet replicate: " + "; ".join(problems))


check_environment()  # before the imports below, which need what it checks (farnet.cli prints its one line)

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from farnet.commands.bench.measure import describe  # noqa: E402
from farnet.commands.bench.side_by_side import (batch_sweep, fastest_path, side_by_side,  # noqa: E402
                                                time_step_paths)
from farnet.commands.bench.summary import device_name  # noqa: E402
from farnet.commands.protocol import carry_params, input_gap  # noqa: E402
from farnet.commands.replicate_options import MeasurePlan, add_arguments, measure_plan, train_budget  # noqa: E402
from farnet.commands.run_record import (Deadline, RunRecord, describe_projection, in_run_timing,  # noqa: E402
                                        schedule_projection)
from farnet.config import Params  # noqa: E402
from farnet.core import provenance  # noqa: E402
from farnet.core.allocator import command_started_at  # noqa: E402
from farnet.core.errors import FarnetError, TrainingDiverged, TrainingInterrupted  # noqa: E402
from farnet.core.fastpath import FastPath, default_device, parse_device, resolve  # noqa: E402
from farnet.core.fileio import read_json_object, write_csv, write_json  # noqa: E402
from farnet.data.carry import read_carry_info, unpack_carry  # noqa: E402
from farnet.data.registry import get_dataset  # noqa: E402
from farnet.data.views import read_dataset_info  # noqa: E402
from farnet.models.trained import TrainedModel, load_trained_model  # noqa: E402
from farnet.stages.evaluate import evaluate_splits, run_info  # noqa: E402
from farnet.stages.train import train_run  # noqa: E402
from farnet.training.budget import TrainBudget  # noqa: E402

#: with a deadline, torch.compile's timing gets at most this share of the time left for it and the training
COMPILE_SHARE = 0.25
#: without a deadline, the most one side-by-side round may take (with one, the time left)
SIDE_TIMEOUT_S = 300.0

__all__ = ["add_arguments", "run", "replicate"]


def run(args: argparse.Namespace) -> int:
    started_at, started_from = command_started_at()
    device = parse_device(args.device) if args.device else default_device()
    os.environ["FARNET_DEVICE"] = str(device)  # the device the train stage's process setup picks
    budget, plan = train_budget(args), measure_plan(args, device)
    with tempfile.TemporaryDirectory(prefix="farnet-replicate-") as scratch:
        summary = replicate(args.carry, args.out, device=device, budget=budget, run_name=args.run,
                            params_path=args.params, input_hw=args.input_hw, work=args.work or Path(scratch),
                            plan=plan, progress=not args.no_progress, model=args.evaluate,
                            deadline=Deadline(started_at, plan.deadline_s),
                            started_from=started_from)
    if summary.get("projection"):
        print(describe_projection(summary["projection"]))
    print(f"{summary['protocol']}; results in {args.out}")
    return summary["exit_code"]


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
              progress: bool = True, model: Path | None = None, deadline: Deadline | None = None,
              started_from: str = "now") -> dict:
    """Train, evaluate and benchmark one run from ``carry``, writing into ``out`` as it goes (module text).

    With ``model`` (a ``model.pt`` with its ``train_info.json`` beside it) nothing is trained or benchmarked: that
    model is evaluated on the carry's test sets at its own input size (e.g. one model on two forms of a carry).

    Args:
        deadline: the command's clock and wall time (default: from now, ``plan.deadline_s``).
        started_from: where the deadline's start comes from, for the record.

    Returns:
        ``protocol`` (the paper's, or "REDUCED: " and why), ``metrics``, ``projection``
        (:func:`schedule_projection`, None without training) and ``exit_code`` (0, or 128 + the signal that
        stopped the training; the model it had reached is evaluated all the same).
    """
    deadline = deadline or Deadline(time.time(), plan.deadline_s)
    info = read_carry_info(carry)
    if model is not None:  # checked against the carry before anything runs
        given = load_trained_model(model)
        if given.meta.get("dataset") != info["dataset"]:
            raise ConfigError(f"{model}: trained on {given.meta.get('dataset')!r} ({given.num_landmarks} landmarks), "
                              f"but {carry} holds {info['dataset']!r}")
        input_hw = tuple(given.input_hw)
    params, paper_hw = carry_params(carry, info, params_path, run_name, input_hw, plan.num_workers)
    record = RunRecord(out, _run_fields(run_name, device, info, budget, plan, deadline, started_from), deadline)
    job = _unpack(carry, params, device, work, plan, progress)
    record.bench = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
                    "fast_path": job.fast.describe(), "input_hw": list(params.input_hw)}
    trains = model is None
    if trains:
        path = _choose_step_path(record, job)
        model, train_info, exit_code, path = _train(record, job, path, budget)
    else:  # a model trained before: evaluated on this carry only
        train_info = read_json_object(model.parent / "train_info.json",
                                      f"not found: the train info written beside {model.name} by its training")
        path, exit_code = None, 0
        record.fields.update(evaluated_model=str(model), budget=None)
        job = replace(job, plan=replace(plan, bench_repeats=0, side_by_side=()))
    write_json(out / "train_info.json", train_info)
    trained = load_trained_model(model, num_landmarks=job.num_landmarks)
    _label(record, trained, train_info, job, paper_hw)
    projection = None
    if trains:
        projection = schedule_projection(train_info, job.params, record.bench.get("step_paths", {}))
        record.fields["schedule_projection"] = projection
        record.save_benchmark(in_run=in_run_timing(train_info), schedule=projection)
    metrics = _evaluate(record, job, trained, train_info)
    if job.plan.bench_repeats > 0:
        _benchmark(record, job, trained.model, path)
    if job.plan.side_by_side:
        _side_by_side(record, job, path, carry_hw=tuple(info["input_hw"]), params_path=params_path,
                      input_hw=input_hw)
    record.finish(exit_code)
    return {"protocol": record.fields["protocol"], "metrics": metrics, "projection": projection,
            "exit_code": exit_code}


def _run_fields(run_name: str, device: torch.device, info: dict, budget: TrainBudget | None,
                plan: MeasurePlan, deadline: Deadline, started_from: str) -> dict:
    """How the run is made, as ``run.json`` opens: command, device, code, carry, budget."""
    return {"command": shlex.join(sys.argv), "run": run_name, "device": str(device),
            "hardware": provenance.hardware_description(), "torch": torch.__version__,
            "git_commit": provenance.code_commit(),
            # where no git is (a working tree copied to a GPU node or cloud box): matched to a commit on import
            "code_digest": provenance.code_digest(provenance.CODE_ROOT),
            "carry": {k: v for k, v in info.items() if k != "attempts"},
            "budget": _budget_record(budget), "deadline_s": plan.deadline_s,
            "started": datetime.fromtimestamp(deadline.started_at, timezone.utc).isoformat(timespec="seconds"),
            "started_from": started_from}


def _unpack(carry: Path, params: Params, device: torch.device, work: Path, plan: MeasurePlan,
            progress: bool) -> _Job:
    """Unpack the carry into ``work/prepared/<dataset>`` and fix what the later steps share."""
    prepared = work / "prepared" / params.data.dataset
    unpack_carry(carry, prepared, progress=progress)
    fast = resolve(params.train.precision, params.train.channels_last, device)
    num_landmarks = len(read_dataset_info(prepared)["landmark_names"])
    return _Job(params, device, fast, num_landmarks, work, plan, progress)


def _choose_step_path(record: RunRecord, job: _Job) -> str:
    """The step path to train on: the only one asked for, or the fastest of those timed (then in the benchmark);
    torch.compile is timed last, limited by :func:`_compile_limit`."""
    plan = job.plan
    if len(plan.paths) == 1:
        return plan.paths[0]
    record.status("timing step paths")
    timings = time_step_paths(job.params, job.num_landmarks, job.device, job.fast, plan.paths, plan.path_steps,
                              plan.path_warmup, log=_say, compile_limit_s=lambda: _compile_limit(record, plan))
    path = fastest_path(timings)
    record.save_benchmark(step_paths=timings, chosen_path=path)
    return path


def _compile_limit(record: RunRecord, plan: MeasurePlan) -> float:
    """The seconds torch.compile's timing may take: ``plan.compile_timeout_s``, under a deadline at most
    :data:`COMPILE_SHARE` of what is left for it and the training (the reserve kept for what follows)."""
    left = record.deadline.left()
    if left is None:
        return plan.compile_timeout_s
    return min(plan.compile_timeout_s, COMPILE_SHARE * (left - plan.reserve_s))


def _train(record: RunRecord, job: _Job, path: str, budget: TrainBudget | None) -> tuple[Path, dict, int, str]:
    """Train the run on ``path``; when that path fails (an exception from its capture or compiler, a diverged
    loss), train once more on :func:`fallback_path` in the time left, the failure recorded under ``fallback``
    in ``run.json`` and ``benchmark.json``.

    Returns:
        The model file, the train info, the exit code (:func:`_train_on`) and the path that trained.

    Raises:
        FarnetError: a problem with the input (not the path's), or a failure of the fallback too.
    """
    try:
        return (*_train_on(record, job, path, budget), path)
    except Exception as exc:  # noqa: BLE001 - a path's failure takes any form (dynamo, CUDA graph, OOM)
        if isinstance(exc, FarnetError) and not isinstance(exc, TrainingDiverged):
            raise  # the input's fault: another path would fail the same way
        failed = {"failed_path": path, "reason": _reason(exc), "ran_path": fallback_path(path)}
    _say(f"the {path} step path failed in training ({failed['reason']}); training again on "
         f"{failed['ran_path']} in the time left")
    record.fields["fallback"] = failed
    record.save_benchmark(fallback=failed)
    shutil.rmtree(job.work / "model", ignore_errors=True)  # the failed path's state: the fallback starts afresh
    try:
        return (*_train_on(record, job, failed["ran_path"], budget), failed["ran_path"])
    except Exception as exc:
        record.fields["fallback"] = {**failed, "fallback_failed": _reason(exc)}
        record.status("failed")
        raise


def fallback_path(path: str) -> str:
    """The step path that replaces a failed one: deferred (the same steps without capture or compiler), or
    eager when deferred failed."""
    return "eager" if path == "deferred" else "deferred"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _train_on(record: RunRecord, job: _Job, path: str, budget: TrainBudget | None) -> tuple[Path, dict, int]:
    """Train the run on ``path`` within what is left of the deadline, logging to ``progress.json``.

    Returns:
        The model file, the train info, and the exit code: 0, or 128 + the signal that stopped the training
        (its model and train info are written all the same).
    """
    record.fields["step_path"] = path
    budget = _fit_deadline(budget, job.plan, record.deadline)
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
    """Test1, then Test2: metrics, per-landmark errors and predictions, each written as soon as it is measured.

    The first split always runs (the model was trained for it); a later one is skipped, and recorded as such,
    when less time is left of the deadline than the split before it took."""
    record.status("evaluating")
    metrics = {"protocol": record.fields["protocol"], "schedule": train_info["schedule"]}
    tables: dict[str, list[pd.DataFrame]] = {"per_landmark.csv": [], "predictions.csv": []}
    splits = list(get_dataset(job.params.data.dataset).eval_splits(job.params.data.fold))
    clock = record.deadline.clock
    began = clock()
    for split in evaluate_splits(job.params, job.prepared, trained, job.device, progress=job.progress):
        metrics.update(split.metrics)
        tables["per_landmark.csv"].append(split.per_landmark)
        tables["predictions.csv"].append(split.predictions)
        for name, frames in tables.items():
            write_csv(record.out / name, pd.concat(frames, ignore_index=True))
        write_json(record.out / "metrics.json", metrics)
        took, began = clock() - began, clock()
        rest, left = splits[splits.index(split.split) + 1:], record.deadline.left()
        if rest and left is not None and left < took:
            for name in rest:
                record.skip(f"evaluation {name}", f"{max(0.0, left):.0f} s left of the deadline, "
                                                  f"{split.split} took {took:.0f} s")
            _say(f"evaluation of {', '.join(rest)} skipped: {max(0.0, left):.0f} s left of the deadline")
            break
    return metrics


def _benchmark(record: RunRecord, job: _Job, network: torch.nn.Module, path: str) -> None:
    """A training step and an inference of the trained network at each batch size, ``benchmark.json`` rewritten
    after each; batch 1 as ``farnet bench`` reports it. The step path is the run's, except torch.compile (each
    new step compiles again, at every batch size): then the fastest other path timed."""
    plan = job.plan
    record.status("benchmarking")
    sweep_path = _uncompiled(record, path)
    batch_sweep(network, job.params, job.num_landmarks, job.device, job.fast, sweep_path, plan.bench_batches,
                plan.bench_repeats, log=_say, time_left=record.deadline.left,
                on_progress=lambda batches: record.save_benchmark(batches=batches))
    bench = record.bench
    for what in ("train_step", "inference"):
        if "median_s" in bench["batches"][what].get("1", {}):
            bench[what] = bench["batches"][what]["1"]
    bench["method"] = (f"farnet.commands.bench.measure.timed: median of {plan.bench_repeats} runs after warm-up, "
                       f"device synchronised around each; the step is farnet.training.steps.Stepper on the "
                       f"{sweep_path} path (EWC, Adam) on the trained model, the inference predict_landmarks "
                       "(upload, forward, argmax, download); step paths: the run's network from its seed, steps "
                       "back to back; a measurement the deadline's time left could not hold is skipped")
    record.save_benchmark(summary={what: describe(bench[what]) for what in ("train_step", "inference")
                                   if what in bench})


def _side_by_side(record: RunRecord, job: _Job, path: str, *, carry_hw: tuple[int, int], params_path: str | Path,
                  input_hw: tuple[int, int] | None) -> None:
    """Training processes side by side on the device, on the run's step path (the fastest other one when that is
    torch.compile), into ``benchmark.json`` after each round; each round limited to the time left."""
    record.status("side by side")
    plan = job.plan
    side_by_side(plan.side_by_side, carry_hw=carry_hw, prepared_root=job.work / "prepared", work=job.work,
                 params_path=params_path, input_hw=input_hw, device=job.device, path=_uncompiled(record, path),
                 steps=plan.side_steps, warmup=plan.side_warmup, timeout_s=SIDE_TIMEOUT_S, log=_say,
                 time_left=record.deadline.left, on_round=lambda results: record.save_benchmark(side_by_side=results))


def _uncompiled(record: RunRecord, path: str) -> str:
    """``path``, or for torch.compile the fastest other path timed: a benchmark's new steps would each compile
    again."""
    if path != "compile":
        return path
    return fastest_path({k: v for k, v in record.bench.get("step_paths", {}).items() if k != "compile"})


def _fit_deadline(budget: TrainBudget | None, plan: MeasurePlan, deadline: Deadline) -> TrainBudget | None:
    """The training's budget under the command's deadline: what is left of it less the reserve (at least a
    minute), or the budget's own seconds when fewer."""
    left = deadline.left()
    if left is None:
        return budget
    left = max(60.0, left - plan.reserve_s)
    budget = budget or TrainBudget()
    return replace(budget, seconds=left if budget.seconds is None else min(budget.seconds, left))


def _budget_record(budget: TrainBudget | None) -> dict | None:
    return None if budget is None else {"seconds": budget.seconds, "max_steps": budget.max_steps,
                                        "probe_steps": budget.probe_steps}


def _say(message: str) -> None:
    print(f"replicate: {message}", file=sys.stderr, flush=True)
