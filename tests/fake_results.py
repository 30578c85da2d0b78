"""Hand-made ``results/`` folders for the report tests: run info, metrics and tiny predictions / per-landmark CSVs,
written as the evaluate stage writes them, with no training."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

RADII = ["2.0", "2.5", "3.0", "4.0"]

#: a run info as the evaluate stage writes it: the paper's FARNet on ISBI, seed 0, quick profile
RUN_INFO = {
    "experiment": "a", "run": "a", "profile": "quick", "dataset": "isbi2015", "fold": 1, "data_source": "mirror",
    "data_note": "half-resolution JPEGs", "full_set": False, "n_train_images": 40, "pretrained": "none",
    "architecture": "farnet", "backbone": "densenet121", "fusion": "concat", "refinement": "guided",
    "epochs": 1, "steps": 40, "input_hw": [160, 128], "sigma_px": 4.0, "loss": "ewc", "alpha": 40.0,
    "optimizer": "adam", "lr": 1e-3, "seed": 0, "select": "last", "hardware": "AMD EPYC (2 cores)",
    "train_wall_s": 12.5, "git_commit": "abc1234", "params_hash": "0123456789ab", "date": "2026-12-01T03:00:00",
}


def split(mre: float, sdr: list[float], radii: list[str] = RADII, n_images: int = 150) -> dict:
    """One split's summary as ``results/metrics/<run>.json`` holds it."""
    return {"n_images": n_images, "mre_mm": mre, "sd_mm": 1.0, "sdr": dict(zip(radii, sdr))}


def isbi_metrics(mre1: float, mre2: float, subpixel_shift: float = -0.1) -> dict:
    """Test1 / Test2 metrics (argmax and sub-pixel, the sub-pixel MRE ``subpixel_shift`` away)."""
    metrics = {"test1": split(mre1, [80.0, 85.0, 90.0, 95.0]), "test2": split(mre2, [70.0, 78.0, 85.0, 92.5])}
    for name in ("test1", "test2"):
        metrics[f"{name}_subpixel"] = {**metrics[name], "mre_mm": metrics[name]["mre_mm"] + subpixel_shift}
    return metrics


def predictions(errors_mm_by_split: dict[str, list[list[float]]], decode: str = "argmax") -> pd.DataFrame:
    """A predictions table: split → (N, K) errors in mm, one row per image and landmark, images numbered in
    order across the splits."""
    rows, image = [], 0
    for split_name, errors in errors_mm_by_split.items():
        for per_image in errors:
            image += 1
            for k, error in enumerate(per_image):
                rows.append({"split": split_name, "decode": decode, "image_id": f"{image:03d}", "landmark": k,
                             "name": f"L{k + 1}", "x_pred": 10.0 + error, "y_pred": 20.0, "x_true": 10.0,
                             "y_true": 20.0, "error_px": 10 * error, "error_mm": error})
    return pd.DataFrame(rows)


def per_landmark(mre_by_split: dict[str, list[float]]) -> pd.DataFrame:
    """A per-landmark table: split → each landmark's MRE (argmax; a sub-pixel copy 0.1 mm lower)."""
    rows = [{"split": s, "decode": decode, "landmark": k, "name": f"L{k + 1}", "mre_mm": mre - shift,
             "sd_mm": 0.5, "sdr_2.0": 50.0}
            for decode, shift in (("argmax", 0.0), ("subpixel", 0.1))
            for s, mres in mre_by_split.items() for k, mre in enumerate(mres)]
    return pd.DataFrame(rows)


def write_run(root: Path, run: str, metrics: dict, *, preds: pd.DataFrame | None = None,
              per_lm: pd.DataFrame | None = None, **info) -> None:
    """Write ``run``'s metrics and run info (:data:`RUN_INFO` with ``info`` over it), and its CSVs if given."""
    for folder in ("metrics", "runs", "predictions", "per_landmark"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "metrics" / f"{run}.json").write_text(json.dumps(metrics))
    (root / "runs" / f"{run}.json").write_text(json.dumps({**RUN_INFO, "experiment": run, "run": run, **info}))
    if preds is not None:
        preds.to_csv(root / "predictions" / f"{run}.csv", index=False)
    if per_lm is not None:
        per_lm.to_csv(root / "per_landmark" / f"{run}.csv", index=False)
