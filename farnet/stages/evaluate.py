"""The evaluate stage: a trained model on its run's evaluation splits, measured in original pixels."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from farnet.config import Params
from farnet.data.registry import get_dataset
from farnet.data.views import load_split, read_dataset_info
from farnet.evaluation.loop import evaluate_split, predict_network
from farnet.core.fastpath import default_device, resolve
from farnet.core.errors import DataError
from farnet.core.fileio import read_json_object, write_csv, write_json
from farnet.core import provenance
from farnet.models.interface import HeatmapNetwork, default_inference_path, describe_inference, inference_network
from farnet.models.trained import TrainedModel, load_trained_model


# argmax (the paper), then the decoders beyond it: sub-pixel (DARK) and guided (fine peak near the coarse peak)
DECODE_COLUMNS = ("argmax", "subpixel", "guided")


def evaluate_run(params: Params, prepared_root: Path, model_dir: Path, results: Path, *, progress: bool = True) -> dict:
    """Evaluate ``model_dir/model.pt`` on the run's evaluation splits.

    Writes ``results/metrics/<run>.json`` (DVC metrics), ``results/per_landmark/<run>.csv``,
    ``results/predictions/<run>.csv`` and ``results/runs/<run>.json`` (how the result was made).
    """
    trained = load_trained_model(model_dir / "model.pt")
    train_info = _read_train_info(model_dir / "train_info.json")  # checked before anything is evaluated or written
    prepared = prepared_root / params.data.dataset
    metrics, per_lm, preds = {}, [], []
    device = default_device()
    network = evaluation_network(params, trained, device, default_inference_path())
    for split in evaluate_splits(params, prepared, trained, device, progress=progress, network=network):
        metrics.update(split.metrics)
        per_lm.append(split.per_landmark)
        preds.append(split.predictions)
    name = params.run or "run"
    write_json(results / "metrics" / f"{name}.json", metrics)
    write_csv(results / "per_landmark" / f"{name}.csv", pd.concat(per_lm, ignore_index=True))
    write_csv(results / "predictions" / f"{name}.csv", pd.concat(preds, ignore_index=True))
    info = run_info(trained.meta["params"], train_info, read_dataset_info(prepared))
    write_json(results / "runs" / f"{name}.json", {**info, "inference": describe_inference(network)})
    return metrics


# what the run info of a result reads from the train stage's train_info.json
TRAIN_INFO_KEYS = ("run", "device", "epochs", "steps", "hardware", "n_train_images", "select", "selected_epoch",
                   "train_wall_s")


def _read_train_info(path: Path) -> dict:
    """The train stage's ``train_info.json``, with every key a result's run info needs; a DataError naming it."""
    info = read_json_object(path, "not found: the train stage writes it beside model.pt (re-run its train stage)")
    missing = [key for key in TRAIN_INFO_KEYS if key not in info]
    if missing:
        raise DataError(path, f"missing keys {missing}: not a complete train_info.json (re-run its train stage)")
    return info


@dataclass(frozen=True)
class SplitResult:
    """One evaluation split of a run: its metrics (keyed as ``metrics/<run>.json`` keys them: the split for the
    paper's argmax, ``<split>_<decoder>`` for the others), per-landmark table and predictions."""

    split: str
    metrics: dict
    per_landmark: pd.DataFrame
    predictions: pd.DataFrame


def evaluation_network(params: Params, trained: TrainedModel, device: torch.device,
                       path: str = "eager") -> HeatmapNetwork:
    """The loaded model ready to predict on ``device``, on the run's own fast path ("auto" decided here, as the
    training decided it) and the inference ``path`` (:data:`farnet.models.interface.INFERENCE_PATHS`)."""
    fast = resolve(params.train.precision, params.train.channels_last, device)
    return inference_network(trained.model, device, fast, path)


def evaluate_splits(params: Params, prepared: Path, trained: TrainedModel, device: torch.device, *,
                    progress: bool = True, network: HeatmapNetwork | None = None) -> Iterator[SplitResult]:
    """The trained model on each of the run's evaluation splits of the prepared dataset, one split at a time (a
    caller can write each as soon as it is measured); ``network``: the model made ready by
    :func:`evaluation_network` (made here, eager, when not given)."""
    spec = get_dataset(params.data.dataset)
    meta = trained.meta
    network = network or evaluation_network(params, trained, device)
    info = read_dataset_info(prepared)
    for split in spec.eval_splits(params.data.fold):
        view = load_split(prepared, split, tuple(meta["input_hw"]))
        pred = predict_network(network, view.images, batch_size=params.eval.batch_size, device=device,
                               progress=progress, desc=f"evaluate {split}", decoders=DECODE_COLUMNS,
                               guided_radius_px=max(1, round(params.eval.guided_radius * meta["input_hw"][0])))
        summaries, table, rows = evaluate_split(pred, view, params.eval.sdr_radii_mm, error_unit(spec.unit, view),
                                                angles=info["extras"].get("cobb_angles_deg"))
        metrics = {split: summaries["argmax"]}  # the paper's decoding
        for decoder in DECODE_COLUMNS[1:]:  # beyond the paper, each in its own column
            metrics[f"{split}_{decoder}"] = summaries[decoder]
        yield SplitResult(split, metrics, table, rows)


def error_unit(unit: str, view) -> str:
    """The unit errors of a split are reported in: the dataset's, except "px" for mm without a spacing for
    every image (own data whose CSV leaves ``spacing_mm`` empty, README)."""
    return "px" if unit == "mm" and not np.all(np.isfinite(view.spacing_mm)) else unit


def run_info(trained: dict, info: dict, dataset_info: dict) -> dict:
    """How a result was made (docs/design.md §5): profile, data, weights, schedule, hardware, commit.

    Args:
        trained: the resolved parameters the model was trained with (stored in ``model.pt``).
        info: the training stage's ``train_info.json``.
        dataset_info: the prepared dataset's ``dataset.json``.
    """
    dataset = trained["data"]["dataset"]
    fetched = dataset_info.get("fetched", {})
    source = fetched.get("source", "unknown")
    extras = dataset_info.get("extras", {})
    train_split_size = info["n_train_images"]
    full = trained["data"]["train_limit"] is None
    spec = get_dataset(dataset)
    if spec.full_train_images is not None:
        full = full and train_split_size == spec.full_train_images
    if "images_listed" in extras:  # hand: the mirror holds 9 of the 895 images
        full = full and extras["images_present"] == extras["images_listed"]
    model, train_p, data = trained["model"], trained["train"], trained["data"]
    return {
        "experiment": info["run"], "run": info["run"], "profile": trained["profile"], "dataset": dataset,
        "fold": data["fold"], "data_source": source, "data_note": fetched.get("note", spec.data_note),
        "full_set": full, "n_train_images": train_split_size, "counts": dataset_info.get("counts", {}),
        "images_present": extras.get("images_present"), "images_listed": extras.get("images_listed"),
        "annotator": trained["datasets"][dataset].get("annotator"), "pretrained": model["pretrained"],
        "architecture": model.get("architecture", "farnet"), "backbone": model["backbone"],
        "fusion": model["fusion"], "refinement": model["refinement"],
        "epochs": info["epochs"], "steps": info["steps"],
        "input_hw": data["input_hw"] or trained["datasets"][dataset]["input_hw"],
        "sigma_px": trained["heatmap"]["sigma_px"], "loss": trained["loss"]["name"], "alpha": trained["loss"]["alpha"],
        "optimizer": train_p["optimizer"], "lr": train_p["lr"], "precision": train_p["precision"],
        "fast_path": info.get("fast_path", ""),
        "seed": trained["seed"], "select": info["select"], "selected_epoch": info["selected_epoch"],
        "hardware": info["hardware"], "device": info["device"], "train_wall_s": info["train_wall_s"],
        # which schedule ran (None: written before schedules were recorded) and, for data from a carry, its form
        "schedule": info.get("schedule"), "data_form": dataset_info.get("carry"),
        "git_commit": provenance.code_commit(), "params_hash": provenance.params_hash(trained),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
        "torch": torch.__version__,
    }
