"""The training-curves figure of ``results/plots/``: loss, Test MRE, outlier rate and learning rate against the
training step, read from the dvclive logs the train stage writes (one folder per run under ``results/train/``).

The Test MREs in these logs are measured during training for the curve only (``train.monitor_every``); they
never choose the model (docs/design.md §4).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from farnet.core.errors import DataError
from farnet.report.figures import save_figure, title_figure  # sets the headless backend before pyplot loads

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is set)


def read_dvclive_metrics(dvclive_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Every metric TSV that dvclive wrote, keyed by its path below ``plots/metrics`` without ``.tsv``.

    Args:
        dvclive_dir: a dvclive folder (holding ``plots/metrics``), or the metrics folder itself.

    Returns:
        e.g. ``{"train/loss": DataFrame(step, value), "lr": …}`` sorted by name.

    Raises:
        DataError: no TSV found, or a TSV lacks a ``step`` column or a value column.
    """
    root = Path(dvclive_dir)
    metrics_dir = root / "plots" / "metrics" if (root / "plots" / "metrics").is_dir() else root
    paths = sorted(metrics_dir.rglob("*.tsv"))
    if not paths:
        raise DataError(metrics_dir, "no dvclive metric files (*.tsv) found")
    curves = {}
    for path in paths:
        table = pd.read_csv(path, sep="\t")
        values = [c for c in table.columns if c not in ("timestamp", "step")]
        if "step" not in table.columns or len(values) != 1:
            raise DataError(path, f"expected columns timestamp, step and one metric; got {list(table.columns)}",
                            line=1)
        curves[path.relative_to(metrics_dir).with_suffix("").as_posix()] = pd.DataFrame(
            {"step": table["step"], "value": pd.to_numeric(table[values[0]], errors="coerce")})
    return curves


#: the panels of the training-curves figure: title -> (dvclive metric, line style); log scale where positive
CURVE_PANELS = {
    "training loss": (("train/loss", "-"),),
    "Test MRE (mm), argmax": (("test1/mre_mm", "-"), ("test2/mre_mm", "--")),
    "landmarks beyond 10 mm (%)": (("test1/outliers_pct", "-"), ("test2/outliers_pct", "--")),
    "learning rate": (("lr", "-"),),
}


def plot_training_curves(logs: Mapping[str, str | Path], out: str | Path, *,
                         label: str | None = None) -> Path | None:
    """Loss, Test MRE, outlier rate and lr against the training step, one line per run and split.

    A curve is drawn only where a run logged at least two points, and a panel only when it has a curve, so a
    one-epoch run draws no empty panel. The Test MREs are measured during training for this curve only
    (``train.monitor_every``); they never choose the model.

    Args:
        logs: run name -> its dvclive folder (see :func:`read_dvclive_metrics`).
        out: PNG path.
        label: label for the title.

    Returns:
        The PNG written, or None when no run has a curve.
    """
    curves = {run: read_dvclive_metrics(path) for run, path in logs.items()}
    panels = {}
    for title, metrics in CURVE_PANELS.items():
        lines = [(run, name, style, table[name]) for run, table in curves.items()
                 for name, style in metrics if name in table and table[name]["value"].notna().sum() >= 2]
        if lines:
            panels[title] = lines
    if not panels:
        return None
    ncols = min(len(panels), 2)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(5.5 * ncols, 3.6 * nrows + 0.6),
                             layout="constrained")
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for run, name, style, curve in lines:
            split = name.split("/")[0] if "/" in name and not name.startswith("train/") else ""
            ax.plot(curve["step"], curve["value"], style, marker="." if len(curve) < 30 else None,
                    label=" ".join(part for part in (run, split) if part))
        if all((curve["value"].dropna() > 0).all() for *_, curve in lines):
            ax.set_yscale("log")
        ax.set(title=title, xlabel="training step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    title_figure(fig, "Training curves", label)
    return save_figure(fig, out)
