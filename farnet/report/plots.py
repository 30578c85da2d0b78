"""The plots stage: every figure of ``results/plots/``, for the runs the tables show.

The runs are chosen as the tables choose them (:mod:`farnet.report.paper`); the figures are drawn by
:mod:`farnet.report.figures` and :mod:`farnet.report.training_curves`. The EWC curve (Fig. 4) is drawn with the
α that Table 3's run was trained with, read from its run info.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from farnet.core.coords import rescale_points
from farnet.core.provenance import run_label
from farnet.data.views import load_split
from farnet.report.figures import (
    plot_ewc_weight, plot_forest, plot_ours_vs_paper, plot_overlays, plot_per_landmark_mre, plot_sdr_curve,
)
from farnet.report.isbi_tables import methods_table, table3
from farnet.report.paper import fold_runs, load_paper_tables, row_seeds, table1_runs, table2_runs, table3_runs
from farnet.report.results import Results
from farnet.report.training_curves import plot_training_curves


def make_plots(results_dir: Path, prepared_root: Path, n_overlays: int = 4) -> list[Path]:
    """Every figure of ``results/plots/`` for the runs the tables show; returns the paths written.

    From Table 3's run: the EWC curve (Fig. 4) with the α it was trained with, SDR curves, per-landmark MRE,
    training curves and ours-vs-paper bars. Ours-vs-paper bars of Table 1, Table 2 as a forest plot of each
    row's difference from FARNet with its interval (the paper's differences beside), and Fig. 5-style overlays
    of each dataset whose prepared images are here (ISBI: Table 3's run; hand and spine: the first fold run).
    """
    results = Results(results_dir)
    out = results.root / "plots"
    paper = load_paper_tables()
    farnet = table3_runs(results, paper["table3"]).first
    written = []
    if farnet is not None:
        info = results.info(farnet)
        label = run_label(info)
        written.append(plot_ewc_weight(info["alpha"], out / "ewc_weight.png"))
        argmax = results.predictions(farnet).query("decode == 'argmax'")
        written.append(plot_sdr_curve({s: g["error_mm"].to_numpy() for s, g in argmax.groupby("split")},
                                      out / "isbi2015_sdr_curve.png", label=label))
        per_lm = results.per_landmark(farnet)
        written.append(plot_per_landmark_mre(per_lm[per_lm["decode"] == "argmax"],
                                             out / "isbi2015_per_landmark_mre.png", label=label))
        logs = {p.name: p for p in sorted((results.root / "train").glob("*")) if p.is_dir() and any(p.rglob("*.tsv"))}
        curves = plot_training_curves(logs, out / "training_curves.png", label=label) if logs else None
        if curves is not None:
            written.append(curves)
        frames = table3(results.metrics(farnet), info, paper)
        written.append(plot_ours_vs_paper(frames["ours_vs_paper"], out / "table3_ours_vs_paper.png",
                                          label=label, title="Table 3: ours vs paper (FARNet row)"))
    t1 = table1_runs(results, paper["table1"])
    bars = _bars(methods_table(results, paper["table1"], t1, row_seeds(results, paper["table1"], t1)))
    if bars is not None:
        written.append(plot_ours_vs_paper(bars, out / "table1_ours_vs_paper.png", label=run_label(results.info(t1.first)),
                                          title="Table1: Test1 MRE and SDR@2mm, ours vs paper"))
    t2 = table2_runs(results, paper["table2"])
    if t2.first is not None:
        try:
            written.append(plot_forest(methods_table(results, paper["table2"], t2, row_seeds(results, paper["table2"], t2)),
                                       out / "table2_forest.png",
                                       label=run_label(results.info(t2.first)),
                                       title="Table 2 on Test1: each row's MRE minus FARNet's (95 % intervals)"))
        except ValueError:  # no differences with intervals (FARNet's row, or the predictions, missing)
            pass
    overlay_runs = {paper["table3"]["dataset"]: farnet,
                    paper["table4"]["dataset"]: fold_runs(results, paper["table4"]).first,
                    paper["table5"]["dataset"]: fold_runs(results, paper["table5"]).first}
    for dataset, run in overlay_runs.items():
        if run is not None and (prepared_root / dataset).is_dir():
            written.append(_overlays(results, run, prepared_root / dataset, out / f"{dataset}_overlays.png",
                                     n_overlays))
    return written


def _bars(df: pd.DataFrame) -> pd.DataFrame | None:
    """Ours-vs-paper rows (Metric, Unit, Paper, Ours, Difference) of MRE and SDR@2mm per method."""
    rows = []
    for method, group in df.groupby("Method", sort=False):
        by = group.set_index("Source")
        if "ours" not in by.index:
            continue
        for metric, unit in (("MRE", "mm"), ("2mm", "%")):
            paper, ours = by.loc["paper", metric], by.loc["ours", metric]
            rows.append({"Metric": f"{method} {metric}", "Unit": unit, "Paper": paper, "Ours": ours,
                         "Difference": ours - paper})
    return pd.DataFrame(rows) if rows else None


def _overlays(results: Results, run: str, prepared_dir: Path, out: Path, n: int) -> Path:
    """Fig. 5 style: the first images of the run's evaluation splits, prediction (red) vs ground truth (blue)."""
    preds = results.predictions(run).query("decode == 'argmax'")
    images, pred_xy, true_xy, titles = [], [], [], []
    splits = list(dict.fromkeys(preds["split"]))
    per_split = max(1, n // len(splits))
    for split in splits:
        view = load_split(prepared_dir, split)
        rows = preds[preds["split"] == split]
        for i, image_id in enumerate(view.ids[:per_split]):
            one = rows[rows["image_id"] == str(image_id)].sort_values("landmark")
            to_input = 1.0 / view.input_to_original[i]  # (2,) original → input pixels
            images.append(np.asarray(view.images[i]))
            pred_xy.append(rescale_points(one[["x_pred", "y_pred"]].to_numpy(), to_input))
            true_xy.append(rescale_points(one[["x_true", "y_true"]].to_numpy(), to_input))
            error = one["error_mm"].mean()
            titles.append(f"{split} {image_id}: " + (f"MRE {error:.2f} mm" if np.isfinite(error)
                                                      else f"{one['error_px'].mean():.1f} px"))
    return plot_overlays(images, pred_xy, true_xy, titles, out, label=run_label(results.info(run)),
                         numbers=len(pred_xy[0]) <= 40)
