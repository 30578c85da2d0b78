"""The train stage: one run through the training engine, writing the model and how it was trained."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from farnet.training import distributed
from farnet.core import devices
from farnet.core.allocator import malloc_setting
from farnet.core.checkpoint import load_checkpoint, remove_stale_temporaries, save_atomic
from farnet.config import Params, effective_dict
from farnet.core.errors import ConfigError, TrainingInterrupted
from farnet.data.registry import get_dataset
from farnet.data.torch_dataset import LandmarkDataset
from farnet.data.views import SplitView, load_split, read_dataset_info
from farnet.models.interface import IMAGENET_MEAN, IMAGENET_STD
from farnet.training.budget import TrainBudget
from farnet.training.engine import RunSettings, steps_per_epoch, train
from farnet.training.options import TrainOptions, TrainResult
from farnet.training.resume import resumable_point
from farnet.evaluation.loop import evaluate_split, predict_landmarks
from farnet.core.fileio import write_json
from farnet.training.losses import build_loss
from farnet.models.factory import build_model
from farnet.training.steps import default_step_path
from farnet.core import provenance
from farnet.core.fastpath import resolve


# How a run is watched, fed or saved, never what it trains: a change of these resumes an interrupted run (the
# augmentation is seeded per item from (seed, epoch, index), so the loader's workers do not change the images).
NOT_WEIGHTS = ("log_every_steps", "monitor_every", "checkpoint_every", "num_workers", "save_dtype")


def fingerprint(params: Params, view: SplitView, budget: TrainBudget | None = None) -> str:
    """Identity of a training run: every parameter that changes its weights (all it reads but
    :data:`NOT_WEIGHTS`), the data it sees and its budget's limits (a run under another budget never resumes this
    one)."""
    p = effective_dict(params)
    payload = {k: p[k] for k in ("seed", "data", "heatmap", "model", "loss", "train")}
    payload["train"] = {k: v for k, v in payload["train"].items() if k not in NOT_WEIGHTS}
    payload["dataset"] = p["datasets"][params.data.dataset]
    payload["eval_select"] = p["eval"]["select"]
    payload["data_ids"] = list(view.ids)
    payload["input_hw"] = list(view.input_hw)
    if budget is not None:
        payload["budget"] = {"seconds": budget.seconds, "max_steps": budget.max_steps}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_run(params: Params, prepared_root: Path, model_dir: Path, log_dir: Path | None = None,
              *, progress: bool = True, budget: TrainBudget | None = None,
              log: Callable[[int, dict], None] | None = None, step_path: str | None = None) -> dict:
    """Train one run: ``model_dir/model.pt`` (selected weights + metadata), ``model_dir/train_info.json`` and
    the resumable state in ``model_dir/state/``.

    Under ``torchrun`` every process trains a share of each epoch (DDP, :mod:`farnet.training.distributed`); rank 0
    alone writes the log, the checkpoints and the model. A single-process run on a node with several visible GPUs
    takes a free one and holds it to its end (:mod:`farnet.core.devices`), so runs started side by side spread over
    the node's GPUs; ``train_info.json`` records it (``device``, and ``gpu``: the node's name for it).

    Args:
        log_dir: the dvclive folder of the training curves; None: no dvclive (it is imported only for one).
        budget: limits on the session (one process): a run it shortens or stops still ends here, with its model
            and ``train_info.json`` saying which schedule ran (``schedule``).
        log: called like the engine's ``log`` (global step, {name: value}), besides dvclive.
        step_path: how each step runs (:data:`farnet.training.steps.STEP_PATHS`); default: ``FARNET_STEP_PATH``, else
            eager (:func:`farnet.training.steps.default_step_path`). Data-parallel runs step eagerly.

    Raises:
        TrainingInterrupted: after SIGINT/SIGTERM; ``model.pt`` and ``train_info.json`` are written from the
            weights reached (``schedule.stopped: "signal"``) and the resumable state is kept, so running the same
            command again resumes.
    """
    rank, world_size, device = distributed.init_from_env()
    claim = None
    try:
        # several runs side by side on a multi-GPU node: this one takes a free GPU and keeps it to its end
        device, claim = devices.device_for_run(device, world_size, holder=f"train {params.run}")
        if claim is not None and device.type == "cuda":
            torch.cuda.set_device(device)  # stray allocations on plain "cuda" go to the claimed GPU too
        return _train_run(params, prepared_root, model_dir, log_dir, progress=progress, rank=rank,
                          world_size=world_size, device=device, budget=budget, extra_log=log,
                          step_path=step_path, gpu=claim.name if claim is not None else None)
    finally:
        distributed.cleanup()
        if claim is not None:
            claim.release()


def _train_run(params: Params, prepared_root: Path, model_dir: Path, log_dir: Path | None, *, progress: bool,
               rank: int, world_size: int, device: torch.device, budget: TrainBudget | None = None,
               extra_log: Callable[[int, dict], None] | None = None, step_path: str | None = None,
               gpu: str | None = None) -> dict:
    step_path = step_path or default_step_path()
    if world_size > 1 and step_path != "eager":
        raise ConfigError(f"step path {step_path!r} (FARNET_STEP_PATH) is for one process; data-parallel runs "
                          "step eagerly: unset it under torchrun")
    spec = get_dataset(params.data.dataset)
    spec.check_fold(params.data.fold)
    if params.eval.select == "best_test1" and "test1" not in spec.eval_splits(params.data.fold):
        raise ConfigError(f"eval.select: best_test1 needs a Test1 split, which {spec.name} has not")
    prepared = prepared_root / params.data.dataset
    view = load_split(prepared, spec.train_split(params.data.fold), params.input_hw, params.data.train_limit)
    dataset = LandmarkDataset(view.images, view.landmarks, augment=params.dataset.augment, seed=params.seed)
    num_landmarks = view.landmarks.shape[1]
    torch.manual_seed(params.seed)
    model = build_model(params.model, num_landmarks)
    t = params.train
    options = TrainOptions.from_params(params)
    validate = _validator(params, spec, prepared, device)
    monitor = _monitor(params, spec, prepared, device) if t.monitor_every else None
    fp = fingerprint(params, view, budget)
    state_dir = model_dir / "state"
    if rank == 0:  # the one process that writes checkpoints: a SIGKILLed save's temporaries go
        remove_stale_temporaries(state_dir)
    epochs_done, steps_done = resumable_point(state_dir, fp)
    per_epoch = steps_per_epoch(len(dataset), t.batch_size, world_size)
    resumed_at = epochs_done * per_epoch + steps_done
    live = _live(log_dir, resumed_at) if log_dir is not None and rank == 0 else None
    log = _logger(live, extra_log if rank == 0 else None)
    model_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    end = _RunEnd(params, model, view, model_dir, device, world_size, started, per_epoch, rank, gpu)
    try:
        settings = RunSettings(fingerprint=fp, device=device, rank=rank, world_size=world_size, step_path=step_path,
                               budget=budget, progress=progress, log=log, validate=validate, monitor=monitor)
        result = train(model, dataset, build_loss(params.loss), options, state_dir, settings)
    except TrainingInterrupted as exc:  # the weights reached are a usable model; the state stays for a resume
        if exc.result is not None:
            end.save(exc.result, keep_state=True)
        raise
    finally:
        if live is not None:
            live.end()
    if params.eval.select == "best_test1" and result.stopped is None:
        model.load_state_dict(load_checkpoint(state_dir / "best.pt")["model"])
    return end.save(result, keep_state=False)


def _logger(live, extra: Callable[[int, dict], None] | None) -> Callable[[int, dict], None] | None:
    """One log callback for the engine: to dvclive (every curve on the global-step axis) and to ``extra``."""
    if live is None and extra is None:
        return None

    def log(step: int, values: dict) -> None:
        if live is not None:
            live.step = step
            for key, value in values.items():
                live.log_metric(key, value)
        if extra is not None:
            extra(step, values)

    return log


@dataclass
class _RunEnd:
    """The end of a run, whatever ended it: ``model.pt`` and ``train_info.json`` from the weights in memory."""

    params: Params
    model: torch.nn.Module
    view: SplitView
    model_dir: Path
    device: torch.device
    world_size: int
    started: float
    steps_per_epoch: int
    rank: int
    gpu: str | None = None  # the GPU claimed on a shared node, by the node's name (farnet.core.devices)

    def save(self, result: TrainResult, *, keep_state: bool) -> dict:
        """Write the model and its train info (rank 0); the resumable state goes unless ``keep_state``."""
        params, t = self.params, self.params.train
        selected_epoch = result.epochs
        if params.eval.select == "best_test1" and result.stopped is None:
            selected_epoch = result.best_epoch
        info = {
            "run": params.run, "dataset": params.data.dataset, "fold": params.data.fold,
            # a run stopped inside its schedule: the epochs it trained, as a fraction
            "epochs": result.epochs if result.stopped is None else round(result.steps / self.steps_per_epoch, 3),
            "steps": result.steps, "train_wall_s": round(result.wall_s, 1),
            "session_wall_s": round(time.perf_counter() - self.started, 1), "resumed_from_epoch": result.resumed_from,
            "resumed_from_step": result.resumed_from_step,
            "select": params.eval.select, "selected_epoch": selected_epoch, "n_train_images": len(self.view),
            "device": str(self.device), "gpu": self.gpu, "world_size": self.world_size,
            "hardware": provenance.hardware_description(),
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "data_ids_sha": hashlib.sha256(json.dumps(self.view.ids).encode()).hexdigest()[:12],
            "fast_path": result.fast_path,  # what "auto" resolved to on this device
            "step_path": result.step_path,  # eager, deferred, graph or compile (farnet.training.steps)
            "malloc": malloc_setting(),
            "lr_schedule": t.lr_schedule, "warmup_steps": t.warmup_steps,
            "schedule": schedule_info(result, t.lr_milestones),
            # the Test1/Test2 measurements made during training: for the curves only, never to choose the model
            "monitor": [{"epoch": r["epoch"], **{k: v for k, v in r.items() if "/" in k}}
                        for r in result.history if any("/" in k for k in r)],
        }
        meta = {
            "dataset": params.data.dataset, "num_landmarks": self.view.landmarks.shape[1],
            "landmark_names": list(self.view.landmark_names), "input_hw": list(self.view.input_hw),
            "normalization": {"scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                              "channels": "grey replicated to 3"},
            "backbone": params.model.backbone, "params": effective_dict(params),
            "git_commit": provenance.code_commit(), "selected_epoch": selected_epoch,
            "spacing_mm": _default_spacing(self.view), "spacing_original_wh": _shared_size(self.view),
            "weights_dtype": t.save_dtype,
        }
        if self.rank == 0:
            save_atomic({"model": _stored(self.model.state_dict(), t.save_dtype), "meta": meta},
                        self.model_dir / "model.pt")
            write_json(self.model_dir / "train_info.json", info)
            if not keep_state:
                # a finished run needs only its model: the resumable state (weights and Adam moments, 3x the
                # model) goes
                state_dir = self.model_dir / "state"
                shutil.rmtree(state_dir, ignore_errors=True)
                state_dir.mkdir()
        return info


def schedule_info(result: TrainResult, planned_milestones: Sequence[int]) -> dict:
    """Which schedule a run trained, for ``train_info.json`` and the provenance: ``full`` only when it is the one
    the parameters ask for, trained to its end; else why not (``reduced_by``, ``stopped``)."""
    planned = result.planned_epochs if result.planned_epochs is not None else result.epochs
    return {
        "full": result.reduced_by is None and result.stopped is None,
        "planned_epochs": planned, "planned_lr_milestones": list(planned_milestones),
        "epochs": result.epochs, "lr_milestones": list(result.lr_milestones), "steps": result.steps,
        "reduced_by": result.reduced_by,  # "time budget" or "step limit": the schedule was shortened to fit
        "stopped": result.stopped,  # "time", "steps" or "signal": ended inside the schedule
        "probe_step_s": result.step_s,
    }


def _stored(weights: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The weights as ``model.pt`` keeps them: fp32, or their floating-point tensors rounded to bf16 (half the
    file; the loader casts them back to the network's fp32)."""
    if dtype == "fp32":
        return weights
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}


def _default_spacing(view: SplitView) -> float | None:
    """One spacing for the whole dataset when all its images share it (ISBI: 0.1 mm), else None."""
    spacing = np.unique(view.spacing_mm[np.isfinite(view.spacing_mm)])
    return float(spacing[0]) if spacing.size == 1 and np.all(np.isfinite(view.spacing_mm)) else None


def _shared_size(view: SplitView) -> list[int] | None:
    """The original (W, H) every training image shares, else None: the size a default spacing belongs to."""
    sizes = np.unique(np.asarray(view.original_wh).reshape(-1, 2), axis=0)
    return [int(v) for v in sizes[0]] if len(sizes) == 1 else None


def _validator(params: Params, spec, prepared: Path, device: torch.device):
    """The score that picks the epoch under ``eval.select: best_test1`` (the paper's practice): Test1 MRE. None
    under the default selection (the last epoch)."""
    if params.eval.select != "best_test1":
        return None
    val = load_split(prepared, "test1", params.input_hw)
    fast = resolve(params.train.precision, params.train.channels_last, device)  # the live model's own layout

    def validate(net) -> float:
        pred = predict_landmarks(net, val.images, batch_size=params.eval.batch_size, device=device,
                                 precision=fast.precision, channels_last=fast.channels_last, decoders=("argmax",),
                                 progress=False)
        return evaluate_split(pred, val, params.eval.sdr_radii_mm, spec.unit)[0]["argmax"]["mre_mm"]

    return validate


def _monitor(params: Params, spec, prepared: Path, device: torch.device):
    """The measurement made every ``train.monitor_every`` epochs: argmax MRE (and the % of landmarks beyond
    10 mm) on each of the dataset's evaluation splits and, for a run limited to the first ``data.train_limit``
    training images, on the rest of them (``heldout/…``: what settling runs choose by, never a test split). It
    only draws the learning curve: no epoch is chosen by it (``eval.select`` alone chooses)."""
    views = [load_split(prepared, split, params.input_hw) for split in spec.eval_splits(params.data.fold)]
    heldout = _heldout(params, spec, prepared)
    if heldout is not None:
        views.insert(0, heldout)
    fast = resolve(params.train.precision, params.train.channels_last, device)  # the live model's own layout

    def monitor(net) -> dict[str, float]:
        values = {}
        for view in views:
            pred = predict_landmarks(net, view.images, batch_size=params.eval.batch_size, device=device,
                                     precision=fast.precision, channels_last=fast.channels_last,
                                     decoders=("argmax",), progress=False)
            summary = evaluate_split(pred, view, params.eval.sdr_radii_mm, spec.unit)[0]["argmax"]
            for key in ("mre_mm", "mre_px", "outliers_pct"):
                if key in summary:
                    values[f"{view.split}/{key}"] = summary[key]
        return values

    return monitor


def _heldout(params: Params, spec, prepared: Path) -> SplitView | None:
    """The training images a run limited by ``data.train_limit`` never sees, as split ``heldout``; None when it
    sees them all."""
    limit = params.data.train_limit
    split = spec.train_split(params.data.fold)
    if limit is None or limit >= len(read_dataset_info(prepared)["splits"][split]):
        return None
    return dataclasses.replace(load_split(prepared, split, params.input_hw, skip=limit), split="heldout")


def _live(log_dir: Path, resumed_at: int):
    """The run's dvclive logger; a resumed run (``resumed_at`` > 0 steps) keeps the curves up to that step and
    drops what was logged after it (steps that the run trains again), so no step appears twice."""
    from dvclive import Live  # imported here: only training logs need it

    if resumed_at:
        for tsv in (log_dir / "plots" / "metrics").rglob("*.tsv"):
            lines = tsv.read_text().splitlines(keepends=True)
            step_col = lines[0].rstrip("\n").split("\t").index("step") if lines else 0
            tsv.write_text("".join(lines[:1] + [x for x in lines[1:] if int(x.split("\t")[step_col]) <= resumed_at]))
    # dvcyaml=False: the stage's plots are declared in dvc.yaml; save_dvc_exp=False: `dvc exp run` owns experiments.
    return Live(dir=str(log_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resumed_at > 0)
