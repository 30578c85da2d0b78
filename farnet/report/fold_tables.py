"""Tables 4 and 5 of the paper, the cross-validated ones: hand X-rays (DHA) and spinal AP X-rays (AASCE).

Both take one FARNet run per fold (:func:`~farnet.report.paper.fold_runs`). Table 4 pools the folds' test
images, so each hand image is tested once; Table 5 gives the mean and SD over the fold models on the 50
held-out spine images, each fold's validation images and the 128 further AASCE images, with the Cobb-angle
SMAPE computed from the landmarks (beyond the paper, docs/design.md §5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from farnet.data.registry import get_dataset
from farnet.evaluation.metrics import summarize
from farnet.report import intervals
from farnet.report.columns import radius_label
from farnet.report.results import Results, TableRuns

#: Table 5's evaluation splits: metrics key (``fold_val``: each fold's own) → label
SPINE_SPLITS = {"test": "test (50)", "fold_val": "fold validation", "aasce_test": "AASCE test (128)"}


def table4(results: Results, paper_table: Mapping[str, Any], runs: TableRuns) -> pd.DataFrame:
    """Hand: the paper's rows, then ours pooled over the folds' test images (each image tested once).

    Args:
        results: the results folder.
        paper_table: ``table4`` of :func:`~farnet.report.paper.load_paper_tables`.
        runs: :func:`~farnet.report.paper.fold_runs` output for it.
    """
    radii = paper_table["radii_mm"]
    rows = []
    for row in paper_table["rows"]:
        rows.append({"Method": row["method"], "Source": "paper", "MRE": row["mre_mm"], "SD": row["sd_mm"],
                     **{radius_label(r): row["sdr"][r] for r in radii}, "images": np.nan})
    if not runs.present:
        rows.append({"Method": "FARNet (ours)", "Source": "ours: not run"})
        return pd.DataFrame(rows)
    errors = np.concatenate([  # (N, K): each fold's test images, pooled
        intervals.image_errors(results.predictions(run), _test_split(results, run))[1] for run in runs.present])
    summary = summarize(errors, [float(r) for r in radii])
    ours = {"MRE": summary["mre_mm"], "SD": summary["sd_mm"],
            **{radius_label(r): summary["sdr"][f"{float(r):.1f}"] for r in radii}}
    paper_farnet = next(r for r in rows if r["Method"].startswith("FARNet"))
    profile = results.info(runs.first)["profile"]
    measured = intervals.error_intervals(errors)
    ranges = {f"{name} 95% CI": intervals.format_interval(low, high) for name, (_, low, high) in measured.items()}
    if profile == "paper":  # a run of the paper's protocol: is the paper's number inside our interval?
        ranges["paper MRE in CI"] = intervals.inside(paper_farnet["MRE"], *measured["MRE"][1:])
    rows.append({"Method": f"FARNet (ours, {profile})", "Source": "ours", **ours, "images": errors.shape[0],
                 **ranges})
    rows.append({"Method": "ours − paper FARNet", "Source": "ours − paper",
                 **{key: ours[key] - paper_farnet[key] for key in ours}, "images": np.nan})
    return pd.DataFrame(rows)


def _test_split(results: Results, run: str) -> str:
    """The split a fold's run is tested on (its dataset's first evaluation split for its fold)."""
    info = results.info(run)
    return get_dataset(info["dataset"]).eval_splits(info["fold"])[0]


def table5(results: Results, paper_table: Mapping[str, Any], runs: TableRuns) -> pd.DataFrame:
    """Spine: the paper's rows, then ours on the 50 held-out test images (mean ± SD over the fold models), on
    each fold's validation images, and on the 128 further AASCE images, with Cobb-angle SMAPE; fold models
    trained differently (the study's fold 1 beside quick folds) get rows of their own.

    Args:
        results: the results folder.
        paper_table: ``table5`` of :func:`~farnet.report.paper.load_paper_tables`.
        runs: :func:`~farnet.report.paper.fold_runs` output for it.
    """
    rows = [{"Method": r["method"], "Source": "paper", "Split": "test (50)", "MSE": r["mse"], "ρ": r["rho"]}
            for r in paper_table["rows"]]
    if not runs.present:
        rows.append({"Method": "FARNet (ours)", "Source": "ours: not run"})
        return pd.DataFrame(rows)
    paper_farnet = next(r for r in paper_table["rows"] if r.get("farnet"))
    for group in results.alike_groups(runs.present):  # folds trained alike, each group its own rows
        profile = results.info(group[0])["profile"]
        folds = ", ".join(str(results.info(run)["fold"]) for run in group)
        method = f"FARNet (ours, {profile}, fold{'s' if len(group) > 1 else ''} {folds})"
        for split, label in SPINE_SPLITS.items():
            per_fold = [results.metrics(run, f"fold{results.info(run)['fold']}_val" if split == "fold_val" else split)
                        for run in group]
            row = {"Method": method, "Source": "ours", "Split": label, **_fold_mean_and_sd(per_fold),
                   **_spine_intervals(results, group, split, paper_farnet if profile == "paper" else None)}
            rows.append(row)
            if split == "test":
                rows.append({"Method": "ours − paper FARNet", "Source": "ours − paper", "Split": label,
                             "MSE": row["MSE"] - paper_farnet["mse"], "ρ": row["ρ"] - paper_farnet["rho"]})
    return pd.DataFrame(rows)


def headline_folds(results: Results, runs: TableRuns) -> list[str]:
    """The fold runs a headline number averages: the group trained alike (:meth:`Results.alike_groups`) whose
    runs trained the most steps (the study's spine fold 1 rather than the quick folds beside it)."""
    groups = results.alike_groups(runs.present)
    return max(groups, key=lambda group: results.info(group[0])["steps"]) if groups else []


def _fold_mean_and_sd(per_fold: list[Mapping[str, Any]]) -> dict[str, float]:
    """MSE and ρ as mean and SD over the fold models (SD NaN for one fold), and the mean Cobb SMAPE."""
    mse = np.array([m["mse"] for m in per_fold])
    rho = np.array([m["rho"] for m in per_fold])
    smape = np.array([m.get("cobb_smape", np.nan) for m in per_fold])
    return {"MSE": mse.mean(), "MSE SD (folds)": mse.std(ddof=1) if len(mse) > 1 else np.nan,
            "ρ": rho.mean(), "ρ SD (folds)": rho.std(ddof=1) if len(rho) > 1 else np.nan,
            "Cobb SMAPE % (beyond the paper)": np.nanmean(smape) if np.isfinite(smape).any() else np.nan}


def _spine_intervals(results: Results, runs: list[str], split: str,
                     paper_farnet: Mapping[str, Any] | None = None) -> dict[str, str]:
    """95 % intervals over the images of the fold models' mean MSE and mean ρ on a split that every fold model
    is tested on (the 50 held-out and the 128 AASCE images; not each fold's own validation images), from the
    predictions in fractions of each image's size. Nothing when a run's predictions (or their image sizes) are
    missing. With ``paper_farnet`` (a run of the paper's protocol), whether its MSE and ρ on the 50 held-out
    images lie inside ours."""
    if split == "fold_val" or not all(results.has_predictions(run) for run in runs):
        return {}
    folds = []  # per fold model: (N, K, 2) predicted and true fractional coordinates, images in one order
    for run in runs:
        rows = results.predictions(run)
        rows = rows[(rows["split"] == split) & (rows["decode"] == "argmax")]
        if rows.empty or not {"width", "height"} <= set(rows.columns):
            return {}
        rows = rows.sort_values(["image_id", "landmark"])
        size = rows[["width", "height"]].to_numpy(dtype=np.float64)
        n, k = rows["image_id"].nunique(), rows["landmark"].nunique()
        pred = (rows[["x_pred", "y_pred"]].to_numpy() / size).reshape(n, k, 2)
        true = (rows[["x_true", "y_true"]].to_numpy() / size).reshape(n, k, 2)
        folds.append((pred, true))
    per_image_mse = np.mean([((pred - true) ** 2).mean(axis=(1, 2)) for pred, true in folds], axis=0)
    _, mse_low, mse_high = intervals.mean_interval(per_image_mse)

    def mean_rho(images: np.ndarray) -> float:
        return float(np.mean([np.corrcoef(pred[images].ravel(), true[images].ravel())[0, 1]
                              for pred, true in folds]))

    _, rho_low, rho_high = intervals.statistic_interval(mean_rho, len(per_image_mse))
    out = {"MSE 95% CI": intervals.format_interval(mse_low, mse_high, ".3g"),
           "ρ 95% CI": intervals.format_interval(rho_low, rho_high, ".4f")}
    if paper_farnet is not None and split == "test":
        out["paper MSE in CI"] = intervals.inside(paper_farnet["mse"], mse_low, mse_high)
        out["paper ρ in CI"] = intervals.inside(paper_farnet["rho"], rho_low, rho_high)
    return out
