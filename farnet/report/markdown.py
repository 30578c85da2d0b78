"""Writing a table: Markdown for reading (tabulate, under its provenance block) and CSV at full precision.

Numbers in the Markdown are text to a fixed number of decimals, counts stay integers and a missing value is
``-``; numeric columns are right-aligned. Every file is replaced atomically
(:func:`farnet.core.fileio.write_text`), so a stage stopped halfway leaves no half-written table.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from farnet.core.fileio import write_text

#: headings of the sections that have one even in a one-section file; other keys are capitalised
SECTION_TITLES = {
    "table3": "Table 3 — comparison with prior methods on the ISBI 2015 cephalometric dataset "
              "(rows marked `paper` are copied from the paper)",
    "ours_vs_paper": "Ours vs paper (difference = ours − paper; MRE in mm, SDR in %)",
    "over_seeds": "Mean and SD over the seeds",
    "each_seed": "Each seed, with its 95 % interval over the test images (beyond the paper)",
}


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
        df_or_dfs: one DataFrame, or section key → DataFrame (e.g. :func:`farnet.report.isbi_tables.table3`
            output).
        out_md: Markdown path.
        out_csv: CSV path of the first (main) frame.
        header: Markdown placed above the tables, normally :func:`farnet.report.headers.runs_header`.
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
    """A section key as a file-name part: lower case, runs of other characters as one ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_") or "table"
