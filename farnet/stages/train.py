"""The train stage: one run through the training engine, writing the model and how it was trained."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from farnet import distributed
from farnet.allocator import malloc_setting
from farnet.checkpoint import load_checkpoint, remove_stale_temporaries, save_atomic
from farnet.config import Params, effective_dict
from farnet.errors import ConfigError
from farnet.data.registry import get_dataset
from farnet.data.torch_dataset import LandmarkDataset
from farnet.data.views import SplitView, load_split
from farnet.inference import IMAGENET_MEAN, IMAGENET_STD
from farnet.engine import TrainOptions, resumable_point, train
from farnet.evaluate import evaluate_split, predict_landmarks
from farnet.fileio import write_json
from farnet.losses import build_loss
from farnet.model import build_model
from farnet.report import provenance


def fingerprint(params: Params, view: SplitView) -> str:
    """Identity of a training run: every parameter it reads and the data it sees."""
    p = effective_dict(params)
    payload = {k: p[k] for k in ("seed", "data", "heatmap", "model", "loss", "train")}
    payload["dataset"] = p["datasets"][params.data.dataset]
    payload["eval_select"] = p["eval"]["select"]
    payload["data_ids"] = list(view.ids)
    payload["input_hw"] = list(view.input_hw)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_run(params: Params, prepared_root: Path, model_dir: Path, log_dir: Path | None = None,
              *, progress: bool = True) -> dict:
    """Train one run: ``model_dir/model.pt`` (selected weights + metadata), ``model_dir/train_info.json`` and
    the resumable state in ``model_dir/state/``.

    Under ``torchrun`` every process trains a share of each epoch (DDP, :mod:`farnet.distributed`); rank 0
    alone writes the log, the checkpoints and the model.
    """
    rank, world_size, device = distributed.init_from_env()
    try:
        return _train_run(params, prepared_root, model_dir, log_dir, progress=progress, rank=rank,
                          world_size=world_size, device=device)
    finally:
        distributed.cleanup()


def _train_run(params: Params, prepared_root: Path, model_dir: Path, log_dir: Path | None, *, progress: bool,
               rank: int, world_size: int, device: torch.device) -> dict:
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
    validate = None
    if params.eval.select == "best_test1":
        val = load_split(prepared, "test1", params.input_hw)

        def validate(net):  # the paper's practice: Test1 MRE picks the epoch
            pred = predict_landmarks(net, val.images, batch_size=params.eval.batch_size, device=device,
                                     precision=t.precision, decoders=("argmax",), progress=False)
            return evaluate_split(pred, val, params.eval.sdr_radii_mm, spec.unit)[0]["argmax"]["mre_mm"]

    monitor = _monitor(params, spec, prepared, device) if t.monitor_every else None
    fp = fingerprint(params, view)
    state_dir = model_dir / "state"
    if rank == 0:  # the one process that writes checkpoints: a SIGKILLed save's temporaries go
        remove_stale_temporaries(state_dir)
    epochs_done, steps_done = resumable_point(state_dir, fp)
    steps_per_epoch = math.ceil(math.ceil(len(dataset) / world_size) / t.batch_size)  # the engine's loader's length
    resumed_at = epochs_done * steps_per_epoch + steps_done
    live = _live(log_dir, resumed_at) if log_dir is not None and rank == 0 else None
    log = None
    if live is not None:
        def log(step, values):  # every curve on the global-step axis
            live.step = step
            for key, value in values.items():
                live.log_metric(key, value)

    model_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = train(model, dataset, build_loss(params.loss), options, state_dir, fingerprint=fp,
                   device=device, log=log, validate=validate, monitor=monitor, progress=progress, rank=rank,
                   world_size=world_size)
    if live is not None:
        live.end()
    selected_epoch = result.epochs
    if params.eval.select == "best_test1":
        model.load_state_dict(load_checkpoint(state_dir / "best.pt")["model"])
        selected_epoch = result.best_epoch
    info = {
        "run": params.run, "dataset": params.data.dataset, "fold": params.data.fold, "epochs": result.epochs,
        "steps": result.steps, "train_wall_s": round(result.wall_s, 1),
        "session_wall_s": round(time.perf_counter() - started, 1), "resumed_from_epoch": result.resumed_from,
        "resumed_from_step": result.resumed_from_step,
        "select": params.eval.select, "selected_epoch": selected_epoch, "n_train_images": len(dataset),
        "device": str(device), "world_size": world_size, "hardware": provenance.hardware_description(),
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "data_ids_sha": hashlib.sha256(json.dumps(view.ids).encode()).hexdigest()[:12],
        "fast_path": result.fast_path,  # what "auto" resolved to on this device
        "malloc": malloc_setting(),
        "lr_schedule": t.lr_schedule, "warmup_steps": t.warmup_steps,
        # the Test1/Test2 measurements made during training: for the curves only, never to choose the model
        "monitor": [{"epoch": r["epoch"], **{k: v for k, v in r.items() if "/" in k}}
                    for r in result.history if any("/" in k for k in r)],
    }
    meta = {
        "dataset": params.data.dataset, "num_landmarks": num_landmarks, "landmark_names": list(view.landmark_names),
        "input_hw": list(view.input_hw), "normalization": {"scale": 1 / 255, "mean": IMAGENET_MEAN,
                                                           "std": IMAGENET_STD, "channels": "grey replicated to 3"},
        "backbone": params.model.backbone, "params": effective_dict(params),
        "git_commit": provenance.git_commit(Path.cwd()), "selected_epoch": selected_epoch,
        "spacing_mm": _default_spacing(view), "weights_dtype": t.save_dtype,
    }
    if rank == 0:
        save_atomic({"model": _stored(model.state_dict(), t.save_dtype), "meta": meta}, model_dir / "model.pt")
        write_json(model_dir / "train_info.json", info)
        # a finished run needs only its model: the resumable state (weights and Adam moments, 3x the model) goes
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir()
    return info


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


def _monitor(params: Params, spec, prepared: Path, device: torch.device):
    """The measurement made every ``train.monitor_every`` epochs: argmax MRE (and the % of landmarks beyond
    10 mm) on each of the dataset's evaluation splits. It only draws the learning curve: no epoch is chosen by it
    (``eval.select`` alone chooses)."""
    views = [load_split(prepared, split, params.input_hw) for split in spec.eval_splits(params.data.fold)]

    def monitor(net) -> dict[str, float]:
        values = {}
        for view in views:
            pred = predict_landmarks(net, view.images, batch_size=params.eval.batch_size, device=device,
                                     precision=params.train.precision, decoders=("argmax",), progress=False)
            summary = evaluate_split(pred, view, params.eval.sdr_radii_mm, spec.unit)[0]["argmax"]
            for key in ("mre_mm", "mre_px", "outliers_pct"):
                if key in summary:
                    values[f"{view.split}/{key}"] = summary[key]
        return values

    return monitor


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
