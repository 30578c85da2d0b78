"""What each pipeline stage does, as library functions taking the resolved :class:`~farnet.config.Params`.

The DVC stage scripts in ``pipelines/`` only read argv and params and call one of these. Folder layout (all
relative to the project root, all outside git except ``results/``):

- ``data/raw/<dataset>/``: fetched files, checked against sha256 sums;
- ``data/prepared/<dataset>/``: every image at the dataset's size (memory-mapped) and ``dataset.json``
  (splits, landmark names, unit, extras such as Cobb angles);
- ``models/<run>/``: ``model.pt`` (the selected weights + everything needed to use them), ``train_info.json``
  and the resumable state in ``state/``;
- ``results/``: per-run metrics, predictions and run info; tables, plots, training logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from farnet import distributed, provenance
from farnet.allocator import malloc_setting
from farnet.checkpoint import load_checkpoint, save_atomic
from farnet.config import ModelParams, Params, effective_dict, section_from_dict
from farnet.data.cache import build_cache
from farnet.data.views import DATASET_INFO, SplitView, load_split, read_dataset_info
from farnet.dataset import IMAGENET_MEAN, IMAGENET_STD, LandmarkDataset
from farnet.datasets import get_dataset
from farnet.engine import TrainOptions, resumable_epoch, train
from farnet.errors import DataError
from farnet.evaluate import evaluate_split, predict_landmarks
from farnet.fastpath import resolve_channels_last, resolve_precision
from farnet.fileio import write_csv, write_json
from farnet.losses import build_loss
from farnet.model import build_model


def default_device() -> torch.device:
    """``FARNET_DEVICE`` if set, else CUDA when available, else CPU."""
    return torch.device(os.environ.get("FARNET_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def mirror_root() -> Path | None:
    """The offline mirror named by ``FARNET_DATA_MIRROR``, or None; a set but missing folder is an error."""
    value = os.environ.get("FARNET_DATA_MIRROR")
    if not value:
        return None
    root = Path(value)
    if not root.is_dir():
        raise DataError(root, "FARNET_DATA_MIRROR names a folder that does not exist")
    return root


def fetch(params: Params, dataset: str, raw_root: Path) -> dict:
    """Fetch ``dataset`` into ``raw_root/<dataset>`` from the mirror or the official source."""
    spec = get_dataset(dataset)
    mirror = mirror_root()
    return spec.fetch(raw_root / dataset, mirror / dataset if mirror else None, params.datasets[dataset])


def prepare(params: Params, dataset: str, raw_root: Path, prepared_root: Path) -> dict:
    """Cache every image of ``dataset`` at its size and write ``dataset.json``; returns that info."""
    spec = get_dataset(dataset)
    options = params.datasets[dataset]
    samples, splits, names = spec.read(raw_root / dataset, options)
    if not samples:
        raise DataError(raw_root / dataset, "no images found")
    ids = [s.image_id for s in samples]
    if len(set(ids)) != len(ids):
        raise DataError(raw_root / dataset, "image ids are not unique across splits")
    out = prepared_root / dataset
    build_cache(samples, out, options.input_hw)
    fetched = raw_root / dataset / "FETCHED.json"
    info = {
        "dataset": dataset, "unit": spec.unit, "landmark_names": list(names), "input_hw": list(options.input_hw),
        "splits": splits, "counts": {name: len(v) for name, v in splits.items()},
        "fetched": json.loads(fetched.read_text()) if fetched.is_file() else {},
        "extras": _extras(dataset, raw_root / dataset, ids),
    }
    info["fetched"].pop("files", None)  # per-file hashes stay in FETCHED.json
    write_json(out / DATASET_INFO, info)
    return info


def _extras(dataset: str, root: Path, ids: list[str]) -> dict:
    """Dataset-specific facts evaluation needs beyond landmarks (spine: the Cobb angles of angles.csv)."""
    if dataset == "hand_dha":  # the mirror holds only some of the listed images
        from farnet.data.hand import hand_counts

        counts = hand_counts(root)
        return {"images_listed": counts["listed"], "images_present": counts["present"]}
    if dataset != "spine_boostnet":
        return {}
    from farnet.data.spine import read_angles

    angles = {}
    for split_dir in ("training", "test"):
        angles.update({k: [float(a) for a in v] for k, v in read_angles(root, split_dir).items()})
    return {"cobb_angles_deg": {i: angles[i] for i in ids if i in angles}}


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
    prepared = prepared_root / params.data.dataset
    view = load_split(prepared, spec.train_split(params.data.fold), params.input_hw, params.data.train_limit)
    dataset = LandmarkDataset(view.images, view.landmarks, augment=params.dataset.augment, seed=params.seed)
    num_landmarks = view.landmarks.shape[1]
    torch.manual_seed(params.seed)
    model = build_model(params.model, num_landmarks)
    t = params.train
    options = TrainOptions(epochs=t.epochs, sigma_px=params.heatmap.sigma_px, batch_size=t.batch_size,
                           optimizer=t.optimizer, lr=t.lr, lr_milestones=t.lr_milestones, lr_gamma=t.lr_gamma,
                           precision=t.precision, channels_last=t.channels_last, num_workers=t.num_workers,
                           checkpoint_every=t.checkpoint_every, seed=params.seed)
    validate = None
    if params.eval.select == "best_test1":
        if params.data.dataset != "isbi2015":
            raise DataError(Path("params.yaml"), "eval.select: best_test1 exists only for isbi2015")
        val = load_split(prepared, "test1", params.input_hw)

        def validate(net):  # the paper's practice: Test1 MRE picks the epoch
            pred = predict_landmarks(net, val.images, batch_size=params.eval.batch_size, device=device,
                                     precision=t.precision, decoders=("argmax",), progress=False)
            return evaluate_split(pred, val, params.eval.sdr_radii_mm, spec.unit)[0]["argmax"]["mre_mm"]

    fp = fingerprint(params, view)
    state_dir = model_dir / "state"
    live = _live(log_dir, resume=resumable_epoch(state_dir, fp) > 0) if log_dir is not None and rank == 0 else None
    log = None
    if live is not None:
        def log(epoch, record):
            for key, value in record.items():
                if key != "epoch":
                    live.log_metric(f"train/{key}" if key.startswith("loss") else key, value)
            live.next_step()

    model_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = train(model, dataset, build_loss(params.loss), options, state_dir, fingerprint=fp,
                   device=device, log=log, validate=validate, progress=progress, rank=rank, world_size=world_size)
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
        "select": params.eval.select, "selected_epoch": selected_epoch, "n_train_images": len(dataset),
        "device": str(device), "world_size": world_size, "hardware": provenance.hardware_description(),
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "data_ids_sha": hashlib.sha256(json.dumps(view.ids).encode()).hexdigest()[:12],
        "fast_path": result.fast_path,  # what "auto" resolved to on this device
        "malloc": malloc_setting(),
    }
    meta = {
        "dataset": params.data.dataset, "num_landmarks": num_landmarks, "landmark_names": list(view.landmark_names),
        "input_hw": list(view.input_hw), "normalization": {"scale": 1 / 255, "mean": IMAGENET_MEAN,
                                                           "std": IMAGENET_STD, "channels": "grey replicated to 3"},
        "backbone": params.model.backbone, "params": effective_dict(params),
        "git_commit": provenance.git_commit(Path.cwd()), "selected_epoch": selected_epoch,
        "spacing_mm": _default_spacing(view),
    }
    if rank == 0:
        save_atomic({"model": model.state_dict(), "meta": meta}, model_dir / "model.pt")
        write_json(model_dir / "train_info.json", info)
    return info


def _default_spacing(view: SplitView) -> float | None:
    """One spacing for the whole dataset when all its images share it (ISBI: 0.1 mm), else None."""
    spacing = np.unique(view.spacing_mm[np.isfinite(view.spacing_mm)])
    return float(spacing[0]) if spacing.size == 1 and np.all(np.isfinite(view.spacing_mm)) else None


def evaluate_run(params: Params, prepared_root: Path, model_dir: Path, results: Path, *, progress: bool = True) -> dict:
    """Evaluate ``model_dir/model.pt`` on the run's evaluation splits.

    Writes ``results/metrics/<run>.json`` (DVC metrics), ``results/per_landmark/<run>.csv``,
    ``results/predictions/<run>.csv`` and ``results/runs/<run>.json`` (how the result was made).
    """
    spec = get_dataset(params.data.dataset)
    state = load_checkpoint(model_dir / "model.pt")
    meta = state["meta"]
    model = build_model(model_params_from_meta(meta), meta["num_landmarks"])
    model.load_state_dict(state["model"])
    device = default_device()
    precision = resolve_precision(params.train.precision, device)  # "auto" decided once, here
    channels_last = resolve_channels_last(params.train.channels_last, device, precision)
    prepared = prepared_root / params.data.dataset
    info = read_dataset_info(prepared)
    metrics, per_lm, preds = {}, [], []
    for split in spec.eval_splits(params.data.fold):
        view = load_split(prepared, split, tuple(meta["input_hw"]))
        pred = predict_landmarks(model, view.images, batch_size=params.eval.batch_size, device=device,
                                 precision=precision, channels_last=channels_last, progress=progress,
                                 desc=f"evaluate {split}")
        summaries, table, rows = evaluate_split(pred, view, params.eval.sdr_radii_mm, spec.unit,
                                                angles=info["extras"].get("cobb_angles_deg"))
        metrics[split] = summaries["argmax"]
        metrics[f"{split}_subpixel"] = summaries["subpixel"]
        per_lm.append(table)
        preds.append(rows)
    name = params.run or "run"
    write_json(results / "metrics" / f"{name}.json", metrics)
    write_csv(results / "per_landmark" / f"{name}.csv", pd.concat(per_lm, ignore_index=True))
    write_csv(results / "predictions" / f"{name}.csv", pd.concat(preds, ignore_index=True))
    train_info = json.loads((model_dir / "train_info.json").read_text())
    write_json(results / "runs" / f"{name}.json", run_info(meta["params"], train_info, info))
    return metrics


def model_params_from_meta(meta: dict) -> ModelParams:
    """The model section a checkpoint was trained with (its stored, already resolved parameters)."""
    return section_from_dict(ModelParams, meta["params"]["model"], "model")


def run_info(trained: dict, info: dict, dataset_info: dict) -> dict:
    """How a result was made (DESIGN §5): profile, data, weights, schedule, hardware, commit.

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
    if dataset == "isbi2015":
        full = full and train_split_size == 150
    elif "images_listed" in extras:  # hand: the mirror holds 9 of the 895 images
        full = full and extras["images_present"] == extras["images_listed"]
    model, train_p, data = trained["model"], trained["train"], trained["data"]
    return {
        "experiment": info["run"], "run": info["run"], "profile": trained["profile"], "dataset": dataset,
        "fold": data["fold"], "data_source": source, "data_note": fetched.get("note", _DATA_NOTES.get(dataset, "")),
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
        "git_commit": provenance.git_commit(Path.cwd()), "params_hash": provenance.params_hash(trained),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
        "torch": torch.__version__,
    }


_DATA_NOTES = {
    "isbi2015": "offline mirror: half-size (968x1200) JPEG re-encodes of the 1935x2400 images; annotations "
                "reconstructed from Payer et al.'s CSVs (see the mirror's README)",
    "hand_dha": "Payer et al.'s annotations and 3-fold split; only the images present were used",
    "spine_boostnet": "BoostNet/AASCE images and labels as redistributed (see the mirror's README)",
}


def _live(log_dir: Path, resume: bool):
    from dvclive import Live  # imported here: only training logs need it

    # dvcyaml=False: the stage's plots are declared in dvc.yaml; save_dvc_exp=False: `dvc exp run` owns experiments.
    return Live(dir=str(log_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resume)
