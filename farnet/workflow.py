"""What each pipeline stage does, as library functions taking the resolved :class:`~farnet.config.Params`.

The DVC stage scripts in ``pipelines/`` only read argv and params and call one of these. Folder layout (all
relative to the project root, all outside git except ``results/``):

- ``data/raw/<dataset>/``: fetched files, checked against sha256 sums;
- ``data/prepared/<dataset>/<split>/``: images and landmarks at the input size (memory-mapped arrays);
- ``models/<experiment>/``: ``model.pt`` (the selected weights + everything needed to use them),
  ``checkpoint.pt`` (resumable state), ``train_info.json``;
- ``results/``: metrics, predictions, tables, plots, training logs.
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

from farnet import provenance
from farnet.checkpoint import load_checkpoint, save_atomic
from farnet.config import Params, effective_dict
from farnet.data import isbi
from farnet.data.cache import build_cache, load_cache
from farnet.data.fetch import fetch_isbi2015
from farnet.dataset import IMAGENET_MEAN, IMAGENET_STD, LandmarkDataset
from farnet.engine import TrainOptions, resumable_epoch, train
from farnet.errors import ConfigError, DataError
from farnet.evaluate import evaluate_split, predict_landmarks
from farnet.losses import build_loss
from farnet.model import build_model

SPLITS = {"isbi2015": ("train", "test1", "test2")}
TEST_SPLITS = {"isbi2015": ("test1", "test2")}
LANDMARK_NAMES = {"isbi2015": isbi.LANDMARK_NAMES}


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


def fetch(params: Params, raw_root: Path) -> dict:
    """Fetch the dataset into ``raw_root/<dataset>`` from the mirror or the official source."""
    dataset = params.data.dataset
    mirror = mirror_root()
    if dataset == "isbi2015":
        return fetch_isbi2015(raw_root / dataset, mirror / dataset if mirror else None)
    raise ConfigError(f"data.dataset: {dataset!r} has no fetch step")


def prepare(params: Params, raw_root: Path, out_root: Path) -> dict[str, int]:
    """Cache every split at ``data.input_hw``; returns the number of images per split."""
    dataset = params.data.dataset
    counts = {}
    for split in SPLITS[dataset]:
        samples = isbi.read_isbi2015(raw_root / dataset, split, annotator=params.data.annotator)
        build_cache(samples, out_root / dataset / split, params.data.input_hw)
        counts[split] = len(samples)
    return counts


def fingerprint(params: Params, cache) -> str:
    """Identity of a training run: every parameter it reads and the data it sees."""
    p = effective_dict(params)
    payload = {k: p[k] for k in ("seed", "data", "heatmap", "model", "loss", "train")}
    payload["eval_select"] = p["eval"]["select"]
    payload["data_ids"] = list(cache.ids)
    payload["input_hw"] = list(cache.input_hw)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_model(params: Params, prepared_root: Path, model_dir: Path, log_dir: Path | None = None,
                *, progress: bool = True) -> dict:
    """Train one experiment: ``model_dir/model.pt`` (selected weights + metadata), ``model_dir/train_info.json``
    and the resumable state in ``model_dir/state/``."""
    dataset_name = params.data.dataset
    cache = load_cache(prepared_root / dataset_name / "train")
    dataset = LandmarkDataset(cache.images, cache.landmarks, limit=params.data.train_limit)
    num_landmarks = cache.landmarks.shape[1]
    torch.manual_seed(params.seed)
    model = build_model(params.model, num_landmarks)
    device = default_device()
    t = params.train
    options = TrainOptions(epochs=t.epochs, sigma_px=params.heatmap.sigma_px, batch_size=t.batch_size,
                           optimizer=t.optimizer, lr=t.lr, lr_milestones=t.lr_milestones, lr_gamma=t.lr_gamma,
                           precision=t.precision, channels_last=t.channels_last, num_workers=t.num_workers,
                           checkpoint_every=t.checkpoint_every, seed=params.seed)
    validate = None
    if params.eval.select == "best_test1":
        val = load_cache(prepared_root / dataset_name / "test1")
        names = LANDMARK_NAMES[dataset_name]

        def validate(net):  # the paper's practice: Test1 MRE picks the epoch
            pred = predict_landmarks(net, val.images, batch_size=params.eval.batch_size, device=device,
                                     precision=t.precision, decoders=("argmax",), progress=False)
            return evaluate_split(pred, val, "test1", names, params.eval.sdr_radii_mm)[0]["argmax"]["mre_mm"]

    fp = fingerprint(params, cache)
    state_dir = model_dir / "state"
    live = _live(log_dir, resume=resumable_epoch(state_dir, fp) > 0) if log_dir is not None else None
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
                   device=device, log=log, validate=validate, progress=progress)
    if live is not None:
        live.end()
    selected_epoch = result.epochs
    if params.eval.select == "best_test1":
        model.load_state_dict(load_checkpoint(state_dir / "best.pt")["model"])
        selected_epoch = result.best_epoch
    info = {
        "experiment": model_dir.name, "dataset": dataset_name, "epochs": result.epochs, "steps": result.steps,
        "train_wall_s": round(result.wall_s, 1), "session_wall_s": round(time.perf_counter() - started, 1),
        "resumed_from_epoch": result.resumed_from, "select": params.eval.select, "selected_epoch": selected_epoch,
        "n_train_images": len(dataset), "device": str(device), "hardware": provenance.hardware_description(),
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "data_ids_sha": hashlib.sha256(json.dumps(list(cache.ids)).encode()).hexdigest()[:12],
    }
    meta = {
        "dataset": dataset_name, "num_landmarks": num_landmarks, "landmark_names": list(LANDMARK_NAMES[dataset_name]),
        "input_hw": list(cache.input_hw), "normalization": {"scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                                            "channels": "grey replicated to 3"},
        "backbone": params.model.backbone, "params": effective_dict(params),
        "git_commit": provenance.git_commit(Path.cwd()), "selected_epoch": selected_epoch,
    }
    save_atomic({"model": model.state_dict(), "meta": meta}, model_dir / "model.pt")
    _write_json(model_dir / "train_info.json", info)
    return info


def evaluate_model(params: Params, prepared_root: Path, model_dir: Path, raw_root: Path, results: Path,
                   *, progress: bool = True) -> dict:
    """Evaluate ``model_dir/model.pt`` on the dataset's test splits; writes metrics, tables' inputs and run info."""
    dataset_name = params.data.dataset
    state = load_checkpoint(model_dir / "model.pt")
    meta = state["meta"]
    model = build_model(params.model, meta["num_landmarks"])
    model.load_state_dict(state["model"])
    device = default_device()
    names = meta["landmark_names"]
    metrics, per_lm, preds = {}, [], []
    for split in TEST_SPLITS[dataset_name]:
        cache = load_cache(prepared_root / dataset_name / split)
        pred = predict_landmarks(model, cache.images, batch_size=params.eval.batch_size, device=device,
                                 precision=params.train.precision, channels_last=params.train.channels_last,
                                 progress=progress, desc=f"evaluate {split}")
        summaries, table, rows = evaluate_split(pred, cache, split, names, params.eval.sdr_radii_mm)
        metrics[split] = summaries["argmax"]
        metrics[f"{split}_subpixel"] = summaries["subpixel"]
        per_lm.append(table)
        preds.append(rows)
    _write_json(results / "metrics" / f"{dataset_name}.json", metrics)
    _write_csv(results / "per_landmark" / f"{dataset_name}.csv", pd.concat(per_lm, ignore_index=True))
    _write_csv(results / "predictions" / f"{dataset_name}.csv", pd.concat(preds, ignore_index=True))
    run = run_info(meta["params"], json.loads((model_dir / "train_info.json").read_text()), raw_root / dataset_name)
    _write_json(results / "runs" / f"{dataset_name}.json", run)
    return metrics


def run_info(trained: dict, info: dict, raw_dir: Path) -> dict:
    """How a result was made (DESIGN §5): profile, data, weights, schedule, hardware, commit.

    Args:
        trained: the resolved parameters the model was trained with (stored in ``model.pt``).
        info: the training stage's ``train_info.json``.
        raw_dir: the fetched dataset folder (its ``FETCHED.json`` says where the data came from).
    """
    fetched_path = raw_dir / "FETCHED.json"
    fetched = json.loads(fetched_path.read_text()) if fetched_path.is_file() else {}
    source = fetched.get("source", "unknown")
    note = {"mirror": "offline mirror: half-size (968x1200) JPEG re-encodes of the 1935x2400 images; "
                      "annotations reconstructed from Payer et al.'s CSVs (see the mirror's README)",
            "figshare": "official ISBI 2015 files (figshare 3471833)"}.get(source, "unknown source")
    data, model, train_p = trained["data"], trained["model"], trained["train"]
    full = data["train_limit"] is None and info["n_train_images"] == 150
    return {
        "experiment": info["experiment"], "profile": trained["profile"], "dataset": data["dataset"],
        "data_source": source, "data_note": note, "full_set": full, "n_train_images": info["n_train_images"],
        "annotator": data["annotator"], "pretrained": model["pretrained"], "backbone": model["backbone"],
        "fusion": model["fusion"], "refinement": model["refinement"],
        "epochs": info["epochs"], "steps": info["steps"], "input_hw": data["input_hw"],
        "sigma_px": trained["heatmap"]["sigma_px"], "loss": trained["loss"]["name"], "alpha": trained["loss"]["alpha"],
        "optimizer": train_p["optimizer"], "lr": train_p["lr"], "precision": train_p["precision"],
        "seed": trained["seed"], "select": info["select"], "selected_epoch": info["selected_epoch"],
        "hardware": info["hardware"], "device": info["device"], "train_wall_s": info["train_wall_s"],
        "git_commit": provenance.git_commit(Path.cwd()), "params_hash": provenance.params_hash(trained),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _live(log_dir: Path, resume: bool):
    from dvclive import Live  # imported here: only training logs need it

    # dvcyaml=False: the stage's plots are declared in dvc.yaml; save_dvc_exp=False: `dvc exp run` owns experiments.
    return Live(dir=str(log_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resume)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_csv(tmp, index=False, float_format="%.4f")
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (tuple, Path)):
        return list(value) if isinstance(value, tuple) else str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def make_tables(results: Path) -> list[Path]:
    """Table 3 (Markdown + CSV) from the ISBI metrics and run info, with its provenance header."""
    from farnet.tables import load_paper_tables, read_json, table3, write_table

    metrics = read_json(results / "metrics" / "isbi2015.json")
    run = read_json(results / "runs" / "isbi2015.json")
    frames = table3(metrics, run, load_paper_tables())
    return write_table(frames, results / "tables" / "table3.md", results / "tables" / "table3.csv",
                       provenance.provenance_header(run),
                       title="Table 3: FARNet vs prior methods on the ISBI 2015 cephalometric dataset")


def make_plots(params: Params, results: Path, prepared_root: Path, n_overlays: int = 4) -> list[Path]:
    """SDR curves, per-landmark MRE, Fig. 5-style overlays, the EWC curve (Fig. 4), training curves and
    ours-vs-paper bars for the ISBI run."""
    from farnet import plots
    from farnet.tables import load_paper_tables, read_json, read_predictions, table3

    out = results / "plots"
    run = read_json(results / "runs" / "isbi2015.json")
    label = provenance.run_label(run)
    preds = read_predictions(results / "predictions" / "isbi2015.csv")
    argmax = preds[preds["decode"] == "argmax"]
    written = [plots.plot_sdr_curve({s: g["error_mm"].to_numpy() for s, g in argmax.groupby("split")},
                                    out / "isbi2015_sdr_curve.png", label=label)]
    per_lm = pd.read_csv(results / "per_landmark" / "isbi2015.csv")
    written.append(plots.plot_per_landmark_mre(per_lm[per_lm["decode"] == "argmax"],
                                               out / "isbi2015_per_landmark_mre.png", label=label))
    images, pred_xy, true_xy, titles = [], [], [], []
    for split in TEST_SPLITS["isbi2015"]:
        cache = load_cache(prepared_root / "isbi2015" / split)
        rows = argmax[argmax["split"] == split]
        for i, image_id in enumerate(cache.ids[: n_overlays // 2]):
            one = rows[rows["image_id"].astype(str).str.zfill(3) == str(image_id)].sort_values("landmark")
            ax, ay = cache.input_to_original[i]
            to_input = lambda x, y: np.stack([(x + 0.5) / ax - 0.5, (y + 0.5) / ay - 0.5], axis=-1)  # noqa: E731
            images.append(np.asarray(cache.images[i]))
            pred_xy.append(to_input(one["x_pred"].to_numpy(), one["y_pred"].to_numpy()))
            true_xy.append(to_input(one["x_true"].to_numpy(), one["y_true"].to_numpy()))
            titles.append(f"{split} {image_id}: MRE {one['error_mm'].mean():.2f} mm")
    written.append(plots.plot_overlays(images, pred_xy, true_xy, titles, out / "isbi2015_overlays.png", label=label))
    written.append(plots.plot_ewc_weight(params.loss.alpha, out / "ewc_weight.png"))
    train_log = results / "train" / run["experiment"]
    if train_log.is_dir():
        written.append(plots.plot_training_curves(train_log, out / "training_curves.png", label=label))
    frames = table3(read_json(results / "metrics" / "isbi2015.json"), run, load_paper_tables())
    written.append(plots.plot_ours_vs_paper(frames["ours_vs_paper"], out / "table3_ours_vs_paper.png", label=label,
                                            title="Table 3: ours vs paper (FARNet row)"))
    return written
