"""The paper's result tables rebuilt from our metrics, side by side with the paper's numbers.

The paper's Tables 1–5 live in ``farnet/reference/paper_tables.yaml`` exactly as printed. The builders here
put OUR row under the paper's rows (literature rows are copied from the paper and marked ``source = paper``)
and add an "ours vs paper" table with the difference ours − paper for every metric (DESIGN.md §5).
:func:`write_table` writes Markdown (with the run's provenance header above the tables) and plain CSV, both
atomically. Only Table 3 is wired to a builder now; :func:`ours_vs_paper` and :func:`split_metrics` are the
generic pieces that Tables 1, 2, 4 and 5 reuse.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from farnet.errors import DataError
from farnet.fileio import write_text

PAPER_TABLES_RESOURCE = "reference/paper_tables.yaml"
PREDICTION_COLUMNS = ("split", "decode", "image_id", "landmark", "name",
                      "x_pred", "y_pred", "x_true", "y_true", "error_mm")
TEST_SPLITS = {"test1": "Test1", "test2": "Test2"}
SECTION_TITLES = {
    "table3": "Table 3 — comparison with prior methods on the ISBI 2015 cephalometric dataset "
              "(rows marked `paper` are copied from the paper)",
    "ours_vs_paper": "Ours vs paper (difference = ours − paper; MRE in mm, SDR in %)",
}


# ----------------------------------------------------------------------------------------------------------
# Inputs


def load_paper_tables() -> dict[str, Any]:
    """The paper's Tables 1–5 (``table1`` … ``table5``) from the package's reference YAML."""
    resource = resources.files("farnet").joinpath(PAPER_TABLES_RESOURCE)
    tables = yaml.safe_load(resource.read_text(encoding="utf-8"))
    missing = [f"table{i}" for i in range(1, 6) if f"table{i}" not in tables]
    if missing:
        raise DataError(str(resource), f"missing sections {missing}")
    return tables


def read_json(path: str | Path) -> dict[str, Any]:
    """A metrics or run-info JSON file as a dict.

    Raises:
        DataError: the file is missing, not valid JSON, or not a JSON object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(path, f"invalid JSON: {err.msg}", line=err.lineno) from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions CSV (columns :data:`PREDICTION_COLUMNS`, coordinates in original pixels).

    Raises:
        DataError: the file is missing, lacks a column, or has a missing / non-finite error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    df = pd.read_csv(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(path, f"missing columns {missing}", line=1)
    errors = pd.to_numeric(df["error_mm"], errors="coerce")
    bad = ~errors.map(math.isfinite)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(path, f"error_mm is not a finite number: {df['error_mm'].iloc[row]!r}", line=row + 2)
    return df.assign(error_mm=errors)


# ----------------------------------------------------------------------------------------------------------
# Generic builders


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


# ----------------------------------------------------------------------------------------------------------
# Table 3


def table3(metrics: Mapping[str, Any], run_info: Mapping[str, Any],
           paper: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Table 3 (ISBI 2015, Test1 and Test2) with our row, plus the ours-vs-paper comparison.

    Args:
        metrics: ``results/metrics/isbi2015.json``: ``test1`` and ``test2`` (paper's argmax decoding) and
            optionally ``test1_subpixel`` / ``test2_subpixel`` (beyond the paper).
        run_info: ``results/runs/isbi2015.json`` (``profile`` and ``input_hw`` are used here).
        paper: :func:`load_paper_tables` output.

    Returns:
        ``{"table3": …, "ours_vs_paper": …}``. ``table3`` has columns ``Method, Input size, Test1 MRE,
        Test1 2mm … Test1 4mm, Test2 MRE, Test2 2mm … Test2 4mm, source``: the paper's literature rows and its
        FARNet row (``source = paper``), our row ``FARNet (ours, <profile>)`` and, when present, our
        sub-pixel row (``source = ours, beyond the paper``). ``ours_vs_paper`` has one row per metric with
        ``Paper, Ours, Difference`` (ours − paper), plus sub-pixel columns when present.

    Raises:
        ValueError: a split or radius is missing from ``metrics`` or from the paper's table.
    """
    section = paper["table3"]
    radii = [str(r) for r in section["radii_mm"]]
    profile = run_info.get("profile", "unknown profile")
    hw = run_info.get("input_hw")
    our_size = f"{hw[0]} × {hw[1]}" if hw else None

    rows, paper_farnet = [], None
    for entry in section["rows"]:
        name = "FARNet (paper)" if entry.get("farnet") else entry["method"]
        values = _table3_values(entry, radii, f"paper table3 row {entry['method']!r}")
        rows.append(_table3_row(name, _size_label(entry.get("input_size")), values, "paper"))
        if entry.get("farnet"):
            paper_farnet = values
    if paper_farnet is None:
        raise ValueError("paper table3 has no row marked 'farnet: true'")

    ours = _table3_values(metrics, radii, "metrics")
    rows.append(_table3_row(f"FARNet (ours, {profile})", our_size, ours, "ours"))
    subpixel = None
    if all(f"{split}_subpixel" in metrics for split in TEST_SPLITS):
        subpixel = _table3_values(metrics, radii, "metrics", suffix="_subpixel")
        rows.append(_table3_row(f"FARNet (ours, {profile}, sub-pixel decoding)", our_size, subpixel,
                                "ours, beyond the paper"))

    units = {name: ("mm" if name.endswith("MRE") else "%") for name in ours}
    comparison = ours_vs_paper(ours, paper_farnet, units)
    if subpixel is not None:
        extra = ours_vs_paper(subpixel, paper_farnet, units)
        comparison["Ours (sub-pixel, beyond the paper)"] = extra["Ours"].to_numpy()
        comparison["Difference (sub-pixel)"] = extra["Difference"].to_numpy()
    return {"table3": pd.DataFrame(rows), "ours_vs_paper": comparison}


def _table3_values(source: Mapping[str, Any], radii: Sequence[str], where: str,
                   suffix: str = "") -> dict[str, float]:
    values = {}
    for key, label in TEST_SPLITS.items():
        if key + suffix not in source:
            raise ValueError(f"{where} has no split {key + suffix!r} (has {sorted(source)})")
        flat = split_metrics(source[key + suffix], radii, where=f"{where}[{key + suffix!r}]")
        values.update({f"{label} {name}": value for name, value in flat.items()})
    return values


def _table3_row(method: str, input_size: str | None, values: Mapping[str, float], source: str) -> dict:
    return {"Method": method, "Input size": input_size, **values, "source": source}


def _size_label(size_hw: Sequence[int] | None) -> str | None:
    return None if size_hw is None else f"{size_hw[0]} × {size_hw[1]}"


# ----------------------------------------------------------------------------------------------------------
# Output


def format_frame(df: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """Copy of ``df`` with every number as text to ``decimals`` places and missing values as ``-``."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
            return "-"
        if isinstance(value, (bool, numbers.Integral)) or not isinstance(value, numbers.Real):
            return str(value)  # counts and indices stay integers
        return f"{value:.{decimals}f}"
    return df.apply(lambda column: column.map(cell))


def to_markdown(df: pd.DataFrame, decimals: int = 2) -> str:
    """``df`` as a GitHub Markdown table (tabulate), numbers right-aligned to ``decimals`` places."""
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) else "left" for c in df.columns]
    return format_frame(df, decimals).to_markdown(index=False, disable_numparse=True, colalign=align)


def write_table(df_or_dfs: pd.DataFrame | Mapping[str, pd.DataFrame], out_md: str | Path, out_csv: str | Path,
                header: str, *, title: str | None = None, decimals: int = 2) -> list[Path]:
    """Write one table, or several titled sections, as Markdown and CSV (each file replaced atomically).

    The Markdown opens with ``title`` (if given) and ``header`` (the provenance block), then each section
    under a heading (:data:`SECTION_TITLES` or the key). The first frame goes to ``out_csv``; each further
    frame ``key`` goes to ``<out_csv stem>_<key>.csv`` beside it. CSVs keep full precision.

    Args:
        df_or_dfs: one DataFrame, or section key → DataFrame (e.g. :func:`table3` output).
        out_md: Markdown path.
        out_csv: CSV path of the first (main) frame.
        header: Markdown placed above the tables, normally :func:`farnet.provenance.provenance_header`.
        title: optional top-level heading.
        decimals: decimal places of numbers in the Markdown.

    Returns:
        The paths written: the Markdown first, then the CSVs.
    """
    frames = {"table": df_or_dfs} if isinstance(df_or_dfs, pd.DataFrame) else dict(df_or_dfs)
    if not frames:
        raise ValueError("write_table needs at least one DataFrame")
    out_md, out_csv = Path(out_md), Path(out_csv)
    parts = [f"# {title}\n"] if title else []
    parts.append(header.rstrip() + "\n")
    for key, frame in frames.items():
        if len(frames) > 1 or key in SECTION_TITLES:
            parts.append(f"## {SECTION_TITLES.get(key, key.replace('_', ' ').capitalize())}\n")
        parts.append(to_markdown(frame, decimals) + "\n")
    write_text(out_md, "\n".join(parts))

    written = [out_md]
    for index, (key, frame) in enumerate(frames.items()):
        path = out_csv if index == 0 else out_csv.with_name(f"{out_csv.stem}_{_slug(key)}{out_csv.suffix}")
        write_text(path, frame.to_csv(index=False))
        written.append(path)
    return written


def _slug(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_") or "table"


