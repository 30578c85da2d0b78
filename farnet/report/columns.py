"""How one split's metrics become the columns of a table, and ours set beside the paper's.

A split's summary (``{"mre_mm": …, "sdr": {"2.0": …}}``, ours or a row of the paper) flattens to ``MRE, 2mm,
2.5mm, …`` in the paper's radius order (:func:`split_metrics`); :func:`ours_vs_paper` lists each metric with
the paper's value, ours and the difference ours − paper (docs/design.md §5). A value the paper prints as '-'
is NaN, so its difference is NaN too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

#: the SDR radii of the extra tables beyond the paper (those of Tables 1–3)
EXTRA_RADII_MM = ("2.0", "2.5", "3.0", "4.0")
OUTLIERS = ">10mm %"  # the % of landmarks beyond 10 mm (metrics.OUTLIER_MM), reported for every run of ours
#: the decoders beyond the paper's argmax, each in rows or columns of its own: metrics key suffix -> label
BEYOND_ARGMAX = {"_subpixel": ("sub-pixel", "sub-pixel decoding"),
                 "_guided": ("guided", "guided decoding: the fine peak near the coarse peak")}


def radius_label(radius_mm: str | float) -> str:
    """Column label of an SDR radius: ``"2.0"`` → ``"2mm"``, ``2.5`` → ``"2.5mm"``."""
    return f"{float(radius_mm):g}mm"


def split_metrics(split: Mapping[str, Any], radii_mm: Sequence[str], where: str = "metrics") -> dict[str, float]:
    """Flatten one split's metrics to ``{"MRE": …, "2mm": …, …}`` in the given radius order.

    Args:
        split: ``{"mre_mm": float | None, "sdr": {"2.0": percent, …}}`` (ours or a paper row).
        radii_mm: SDR radii as the metrics write them (``"2.0"``, ``"2.5"``, …).
        where: name of ``split`` for error messages.

    Raises:
        ValueError: a key is missing.
    """
    if "mre_mm" not in split or "sdr" not in split:
        raise ValueError(f"{where} needs 'mre_mm' and 'sdr', has {sorted(split)}")
    flat = {"MRE": _number(split["mre_mm"])}
    for radius in radii_mm:
        if radius not in split["sdr"]:
            raise ValueError(f"{where}['sdr'] has no radius {radius!r} (has {sorted(split['sdr'])})")
        flat[radius_label(radius)] = _number(split["sdr"][radius])
    if "outliers_pct" in split:  # ours only: the paper does not report it
        flat[OUTLIERS] = _number(split["outliers_pct"])
    return flat


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def ours_vs_paper(ours: Mapping[str, float], paper: Mapping[str, float | None],
                  units: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per metric: the paper's value, ours and the difference ours − paper.

    Metrics are listed in the paper's order, then any of ours the paper lacks. A metric missing on either
    side (or printed '-' in the paper) gives NaN for it and for the difference.

    Args:
        ours: metric name → our value.
        paper: metric name → the paper's value (None where the paper prints '-').
        units: metric name → unit ("mm", "%", …) for the ``Unit`` column; blank when absent.

    Returns:
        Columns ``Metric, Unit, Paper, Ours, Difference``.
    """
    names = list(paper) + [name for name in ours if name not in paper]
    rows = []
    for name in names:
        theirs, mine = _number(paper.get(name)), _number(ours.get(name))
        rows.append({"Metric": name, "Unit": (units or {}).get(name, ""),
                     "Paper": theirs, "Ours": mine,
                     "Difference": round(mine - theirs, 10)})  # round off float noise (0.38, not 0.3799…)
    return pd.DataFrame(rows, columns=["Metric", "Unit", "Paper", "Ours", "Difference"])
