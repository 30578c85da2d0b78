"""The figures of ``results/plots/`` drawn from plain inputs: SDR curves, per-landmark errors, Fig. 5 overlays,
Fig. 4 (the EWC weight) and ours vs paper.

Each ``plot_*`` function draws one figure from arrays or DataFrames, writes one PNG atomically, closes the
figure and returns the path; the training curves are drawn by :mod:`farnet.report.training_curves`, and
:func:`farnet.report.plots.make_plots` draws them all from ``results/``. Every figure built from a run carries
that run's label in its title (:func:`farnet.core.provenance.run_label`, e.g. "quick profile — not a
replication"); a caller that passes no label gets a title that claims nothing. Matplotlib runs headless (Agg),
so stages work on servers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from farnet.core.fileio import atomic_write

matplotlib.use("Agg")  # headless: set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

DPI = 120
UNLABELLED = "run profile not stated — not a replication"
PAPER_RADII_MM = (2.0, 2.5, 3.0, 4.0)
PRED_COLOR, TRUE_COLOR = "red", "blue"  # as in the paper's Fig. 5


def title_figure(fig: plt.Figure, title: str, label: str | None) -> None:
    """Title ``fig`` with ``title`` over the run's label (or :data:`UNLABELLED`)."""
    fig.suptitle(f"{title}\n{label or UNLABELLED}", fontsize=11)


def save_figure(fig: plt.Figure, out: str | Path) -> Path:
    """Write ``fig`` as PNG atomically (:func:`farnet.core.fileio.atomic_write`) and close the figure."""
    try:
        return atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def sdr_curve(errors_mm: np.ndarray, radii_mm: np.ndarray) -> np.ndarray:
    """Successful detection rate (%) at each radius: the share of errors ≤ radius (paper §4.1).

    Args:
        errors_mm: (N,) radial errors.
        radii_mm: (R,) radii.

    Returns:
        (R,) percentages.
    """
    ordered = np.sort(np.asarray(errors_mm, dtype=float).ravel())
    return 100.0 * np.searchsorted(ordered, radii_mm, side="right") / ordered.size


def plot_sdr_curve(errors_mm_by_split: Mapping[str, np.ndarray], out: str | Path, *, label: str | None = None,
                   radii_mm: Sequence[float] = PAPER_RADII_MM, max_mm: float = 10.0) -> Path:
    """Cumulative error distribution (SDR vs radius, 0 to ``max_mm``) per test set.

    Args:
        errors_mm_by_split: split name (e.g. "Test1") → (N,) radial errors in mm over images and landmarks.
        out: PNG path.
        label: run label for the title.
        radii_mm: radii marked by vertical lines, with the SDR there in the legend.
        max_mm: right end of the radius axis.

    Raises:
        ValueError: no splits, an empty split, or a negative / non-finite error.
    """
    if not errors_mm_by_split:
        raise ValueError("plot_sdr_curve needs at least one split")
    by_split = {split: np.asarray(errors, dtype=float).ravel() for split, errors in errors_mm_by_split.items()}
    for split, errors in by_split.items():
        if errors.size == 0 or not np.all(np.isfinite(errors)) or np.any(errors < 0):
            raise ValueError(f"split {split!r}: errors must be a non-empty array of finite values ≥ 0")
    radii = np.linspace(0.0, max_mm, 1001)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for split, errors in by_split.items():
        at_marks = ", ".join(f"{r:g}: {v:.1f}" for r, v in zip(radii_mm, sdr_curve(errors, np.asarray(radii_mm))))
        line, = ax.plot(radii, sdr_curve(errors, radii),
                        label=f"{split} (n = {errors.size}, MRE {errors.mean():.2f} mm; SDR % at mm {at_marks})")
        ax.plot(radii_mm, sdr_curve(errors, np.asarray(radii_mm)), "o", color=line.get_color(), ms=4)
    for radius in radii_mm:
        ax.axvline(radius, color="gray", ls="--", lw=0.8)
    ax.set(xlim=(0, max_mm), ylim=(0, 100.5), xlabel="radius (mm)", ylabel="SDR (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    title_figure(fig, "Cumulative error distribution", label)
    return save_figure(fig, out)


def plot_per_landmark_mre(df_per_landmark: pd.DataFrame, out: str | Path, *, label: str | None = None) -> Path:
    """Mean radial error per landmark, one bar per split, with SD error bars.

    Args:
        df_per_landmark: columns ``split, landmark, name, mre_mm, sd_mm`` (see
            :func:`farnet.evaluation.metrics.per_landmark`).
        out: PNG path.
        label: run label for the title.

    Raises:
        ValueError: a required column is missing or the table is empty.
    """
    df = df_per_landmark
    missing = {"split", "landmark", "name", "mre_mm", "sd_mm"} - set(df.columns)
    if missing or df.empty:
        raise ValueError(f"per-landmark table is empty or lacks columns {sorted(missing)}")
    landmarks = df[["landmark", "name"]].drop_duplicates().sort_values("landmark")
    splits = list(dict.fromkeys(df["split"]))
    x = np.arange(len(landmarks))
    width = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.4 * len(landmarks) + 2), 4.8), layout="constrained")
    for i, split in enumerate(splits):
        rows = landmarks.merge(df[df["split"] == split], on=["landmark", "name"], how="left")
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, rows["mre_mm"], width, yerr=rows["sd_mm"],
               capsize=2, label=split, error_kw={"lw": 0.8})
    ax.set_xticks(x, [f"{n + 1}. {name}" for n, name in zip(landmarks["landmark"], landmarks["name"])],
                  rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="MRE ± SD (mm)", xlim=(-0.6, len(landmarks) - 0.4))
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    title_figure(fig, "Mean radial error per landmark", label)
    return save_figure(fig, out)


def plot_overlays(images: Sequence[np.ndarray], preds_xy: Sequence[np.ndarray], trues_xy: Sequence[np.ndarray],
                  titles: Sequence[str], out: str | Path, *, label: str | None = None, ncols: int | None = None,
                  numbers: bool = True) -> Path:
    """Fig. 5-style grid: predictions in red, ground truth in blue, a thin line joining each pair.

    Coordinates are (x, y) in the pixels of the image as given (map them first, e.g. original → input
    size with x_in = (x + 0.5)/ax − 0.5). Landmarks are numbered from 1 (the clinical L1, L2, … convention).

    Args:
        images: each (H, W) grayscale, uint8 or float.
        preds_xy: each (K, 2) predicted landmarks.
        trues_xy: each (K, 2) ground-truth landmarks.
        titles: one per image (e.g. the image id and its MRE).
        out: PNG path.
        label: run label for the figure title.
        ncols: images per row (default: up to 4).
        numbers: write each landmark's number beside its prediction.

    Raises:
        ValueError: the sequences differ in length, or an image or landmark array has the wrong shape.
    """
    n = len(images)
    if n == 0 or not len(preds_xy) == len(trues_xy) == len(titles) == n:
        raise ValueError(f"need equal non-zero counts of images, predictions, truths and titles, got "
                         f"{n}, {len(preds_xy)}, {len(trues_xy)}, {len(titles)}")
    images = [np.asarray(image) for image in images]
    preds_xy = [np.asarray(pred, dtype=float) for pred in preds_xy]
    trues_xy = [np.asarray(true, dtype=float) for true in trues_xy]
    for image, pred, true, title in zip(images, preds_xy, trues_xy, titles):
        if image.ndim != 2 or pred.ndim != 2 or pred.shape[1] != 2 or pred.shape != true.shape:
            raise ValueError(f"{title!r}: need an (H, W) image and two (K, 2) arrays, got {image.shape}, "
                             f"{pred.shape}, {true.shape}")
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    height, width = images[0].shape
    panel_w = 4.0
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(panel_w * ncols, panel_w * height / width * nrows + 0.6))
    for ax, image, pred, true, title in zip(axes.flat, images, preds_xy, trues_xy, titles):
        ax.imshow(image, cmap="gray")
        size = max(2.0, 12.0 - 0.15 * len(pred))  # smaller markers when there are many landmarks (spine: 68)
        for (xp, yp), (xt, yt) in zip(pred, true):
            ax.plot([xp, xt], [yp, yt], color="yellow", lw=0.5)
        ax.scatter(true[:, 0], true[:, 1], s=size, c=TRUE_COLOR, label="ground truth", linewidths=0)
        ax.scatter(pred[:, 0], pred[:, 1], s=size, c=PRED_COLOR, label="prediction", linewidths=0)
        if numbers:
            for k, (xp, yp) in enumerate(pred, start=1):
                ax.annotate(str(k), (xp, yp), xytext=(2, 2), textcoords="offset points", color="red", fontsize=5)
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(image.shape[0] - 0.5, -0.5)
        ax.axis("off")
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes.flat[0].legend(loc="lower left", fontsize=6, markerscale=2)
    title_figure(fig, "Predicted (red) vs ground-truth (blue) landmarks", label)
    return save_figure(fig, out)


def plot_ewc_weight(alpha: float, out: str | Path) -> Path:
    """Fig. 4: the EWC loss (y − ŷ)²·α^y (paper eq. 3) against the prediction ŷ, and the weight α^y against y.

    Args:
        alpha: EWC base α (the run's ``alpha``; the paper's is 40).
        out: PNG path.

    Raises:
        ValueError: ``alpha`` is not positive.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    y_hat = np.linspace(0.0, 1.0, 201)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    for y in (0.0, 0.25, 0.5, 0.75, 1.0):
        line, = left.plot(y_hat, (y - y_hat) ** 2 * alpha**y, label=f"y = {y:g} (weight {alpha**y:.3g})")
        left.plot(y_hat, (y - y_hat) ** 2, ls=":", lw=0.8, color=line.get_color())
    left.set(xlabel=r"prediction $\hat{y}$", ylabel=r"loss $(y-\hat{y})^2\,\alpha^{y}$",
             title="EWC loss (solid) vs L2 (dotted)")
    left.legend(fontsize=8)
    y = np.linspace(0.0, 1.0, 201)
    right.plot(y, alpha**y)
    right.set(xlabel="ground-truth heatmap intensity y", ylabel=r"weight $\alpha^{y}$",
              title=f"weight: 1 far from a landmark, α = {alpha:g} at it")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"Exponential Weighted Center loss (paper eq. 3, Fig. 4), α = {alpha:g}", fontsize=11)
    return save_figure(fig, out)


def plot_ours_vs_paper(df_ours_vs_paper: pd.DataFrame, out: str | Path, *, label: str | None = None,
                       title: str = "Ours vs paper") -> Path:
    """Grouped bars of the paper's value and ours for each metric; one panel per unit (mm, %, …).

    Args:
        df_ours_vs_paper: :func:`farnet.report.columns.ours_vs_paper` output: columns ``Metric, Paper, Ours`` and
            optionally ``Unit`` and further ``Ours (…)`` columns (e.g. sub-pixel decoding), drawn as more bars.
        out: PNG path.
        label: run label for the title.
        title: figure title (e.g. "Table 3 — ours vs paper").

    Raises:
        ValueError: a required column is missing or the table is empty.
    """
    df = df_ours_vs_paper
    missing = {"Metric", "Paper", "Ours"} - set(df.columns)
    if missing or df.empty:
        raise ValueError(f"ours-vs-paper table is empty or lacks columns {sorted(missing)}")
    series = ["Paper", "Ours"] + [c for c in df.columns if c.startswith("Ours (")]
    unit_of_row = df["Unit"].fillna("") if "Unit" in df.columns else pd.Series("", index=df.index)
    units = list(dict.fromkeys(unit_of_row))
    widths = [int((unit_of_row == unit).sum()) for unit in units]
    fig, axes = plt.subplots(1, len(units), squeeze=False, figsize=(max(6.0, 0.7 * len(df) + 3), 4.5),
                             width_ratios=widths, layout="constrained")
    bar = 0.8 / len(series)
    for ax, unit in zip(axes.flat, units):
        rows = df[unit_of_row == unit]
        x = np.arange(len(rows))
        for i, column in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * bar, rows[column].astype(float), bar, label=column)
        ax.set_xticks(x, rows["Metric"], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(unit or "value")
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(series), fontsize=8)
    title_figure(fig, title, label)
    return save_figure(fig, out)


def plot_forest(df_methods: pd.DataFrame, out: str | Path, *, label: str | None = None,
                title: str = "Differences from FARNet") -> Path:
    """A forest plot of a methods table (:func:`farnet.report.isbi_tables.methods_table`): for each row of ours,
    its MRE minus FARNet's on the same images with the 95 % paired interval and its verdict, and beside it the
    paper's difference from the paper's FARNet (a cross); a dashed line at 0.

    Raises:
        ValueError: no row of ours has a difference with an interval.
    """
    rows = []
    for method, group in df_methods.groupby("Method", sort=False):
        by = group.set_index("Source")
        if "ours" not in by.index or not isinstance(by.loc["ours"].get("Δ 95% CI"), str) \
                or not by.loc["ours", "Δ 95% CI"]:
            continue
        low, high = (float(v) for v in by.loc["ours", "Δ 95% CI"].split("–"))
        rows.append((method, by.loc["ours", "Δ MRE vs FARNet"], low, high, by.loc["ours", "verdict"],
                     by.loc["paper", "Δ MRE vs FARNet"] if "paper" in by.index else np.nan))
    if not rows:
        raise ValueError("no row of ours has a difference from FARNet with an interval")
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.8), layout="constrained")
    y = np.arange(len(rows))[::-1]
    colours = {"better": "tab:green", "worse": "tab:red", "not resolved": "tab:grey"}
    for yi, (method, diff, low, high, verdict, paper) in zip(y, rows):
        ax.errorbar(diff, yi, xerr=[[diff - low], [high - diff]], fmt="o", color=colours.get(verdict, "black"),
                    capsize=3)
        if np.isfinite(paper):
            ax.plot(paper, yi - 0.25, "x", color="tab:blue")
        ax.annotate(verdict, (high, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    ax.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.set_xlabel("MRE − FARNet's MRE on the same images (mm); > 0: worse than FARNet")
    ax.plot([], [], "o", color="tab:grey", label="ours, 95 % interval over images")
    ax.plot([], [], "x", color="tab:blue", label="the paper's difference")
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    title_figure(fig, title, label)
    return save_figure(fig, out)
