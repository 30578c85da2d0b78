"""Tables 1–3 of the paper, on ISBI 2015: backbones and ablations on Test1, and FARNet against prior methods.

Each row of the paper is followed by ours and the difference ours − paper (docs/design.md §5); a row of the
paper that has no run yet is listed as "not run". Table 3 adds rows beyond the paper for the decoders beyond
argmax (:data:`~farnet.report.columns.BEYOND_ARGMAX`) and, when ``farnet replicate`` brought one home into
``results/gpu/``, a row for that GPU run (:mod:`farnet.report.gpu`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from farnet.report import intervals
from farnet.report.columns import BEYOND_ARGMAX, ours_vs_paper, split_metrics
from farnet.report.gpu import GpuRun, method_label
from farnet.report.paper import check_gpu_run
from farnet.report.results import TEST_SPLITS, Results, TableRuns


def methods_table(results: Results, paper_table: Mapping[str, Any], runs: TableRuns,
                  seeds: TableRuns | None = None) -> pd.DataFrame:
    """Tables 1 and 2: for each of the paper's methods, its row, ours and ours − paper (``Source`` column).

    Beyond the paper, in columns of their own (:mod:`farnet.report.intervals`): each row of ours gets the 95 %
    intervals of its MRE and SDR@2mm over the test images; every row gets its MRE's difference from the FARNet
    row of its own source (the row marked ``farnet: true``: the paper's differences beside ours), and ours the
    paired interval of that difference and a verdict ("better", "worse", "not resolved"); and a row of ours that
    follows the paper's protocol (profile ``paper``) says whether the paper's MRE lies inside our interval.

    Args:
        results: the results folder.
        paper_table: ``table1`` or ``table2`` of :func:`~farnet.report.paper.load_paper_tables`.
        runs: :func:`~farnet.report.paper.table1_runs` or :func:`~farnet.report.paper.table2_runs` output.
        seeds: FARNet's seed replicates (:func:`~farnet.report.paper.seed_runs`): with the FARNet row's run, the
            SD between seeds that a difference must also exceed to be resolved.
    """
    radii = paper_table["radii_mm"]
    split = paper_table["split"]
    reference_row = next((r for r in paper_table["rows"] if r.get("farnet")), None)
    reference = _errors(results, runs.rows.get(reference_row["method"]) if reference_row else None, split)
    seed_sd = _seed_sd(results, [runs.rows.get(reference_row["method"]) if reference_row else None,
                                 *(seeds.present if seeds else [])], split)
    rows = []
    for paper_row in paper_table["rows"]:
        method, run = paper_row["method"], runs.rows[paper_row["method"]]
        theirs = split_metrics(paper_row, radii, where=f"paper {method}")
        rows.append({"Method": method, "Source": "paper", **theirs,
                     DELTA: theirs["MRE"] - reference_row["mre_mm"] if reference_row else np.nan})
        if run is None:
            rows.append({"Method": method, "Source": "ours: not run", **{k: np.nan for k in theirs}})
            continue
        mine = split_metrics(results.metrics(run, split), radii, where=f"ours {method} ({run})")
        rows.append({"Method": method, "Source": "ours", **mine,
                     **_how_sure(results, run, split, reference, seed_sd, theirs["MRE"])})
        rows.append({"Method": method, "Source": "ours − paper", **{k: mine[k] - theirs[k] for k in theirs}})
    return pd.DataFrame(rows)


DELTA = "Δ MRE vs FARNet"  # a row's MRE minus its source's FARNet row (beyond the paper)


def _errors(results: Results, run: str | None, split: str) -> tuple[list[str], np.ndarray] | None:
    """A run's (image ids, (N, K) errors in mm) on ``split``, argmax; None without a run or predictions."""
    if run is None or not results.has_predictions(run):
        return None
    return intervals.image_errors(results.predictions(run), split)


def _seed_sd(results: Results, runs: Sequence[str | None], split: str) -> float | None:
    """The SD of FARNet's MRE over its seed replicates (None with fewer than two)."""
    values = [results.metrics(run, split)["mre_mm"] for run in runs if run is not None]
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _how_sure(results: Results, run: str, split: str, reference: tuple[list[str], np.ndarray] | None,
              seed_sd: float | None, paper_mre: float) -> dict[str, Any]:
    """The interval columns of one row of ours (see :func:`methods_table`); none without its predictions."""
    if not results.has_predictions(run):
        return {}
    ids, errors = intervals.image_errors(results.predictions(run), split)
    ranges = intervals.error_intervals(errors)
    out = {f"{name} 95% CI": intervals.format_interval(low, high) for name, (_, low, high) in ranges.items()}
    if results.info(run)["profile"] == "paper":  # only a run of the paper's protocol is compared so
        out["paper MRE in CI"] = intervals.inside(paper_mre, *ranges["MRE"][1:])
    if reference is not None:
        difference, low, high = intervals.paired_difference(errors, ids, reference[1], reference[0])
        out.update({DELTA: difference, "Δ 95% CI": intervals.format_interval(low, high),
                    "verdict": intervals.verdict(difference, low, high, seed_sd),
                    "seed SD": np.nan if seed_sd is None else seed_sd})
    return out


def table3(metrics: Mapping[str, Any], run_info: Mapping[str, Any],
           paper: Mapping[str, Any], gpu: GpuRun | None = None,
           predictions: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Table 3 (ISBI 2015, Test1 and Test2) with our row, plus the ours-vs-paper comparison.

    Args:
        metrics: the run's metrics: ``test1`` and ``test2`` (paper's argmax decoding) and optionally
            ``test1_subpixel`` / ``test2_subpixel`` (beyond the paper).
        run_info: the run's info (``profile`` and ``input_hw`` are used here).
        paper: :func:`~farnet.report.paper.load_paper_tables` output.
        gpu: the run imported into ``results/gpu/``: one more row (argmax, ``source = ours, GPU``), labelled by
            :func:`farnet.report.gpu.method_label`, and ``Ours (GPU)`` / ``Difference (GPU)`` columns in the
            comparison. None: the table as without it.
        predictions: the run's predictions: each row of ours then gets the 95 % intervals of its MRE and
            SDR@2mm on each test set over the images (:mod:`farnet.report.intervals`), and, for a run of the
            paper's protocol (profile ``paper``), whether the paper's FARNet MRE lies inside them.

    Returns:
        ``{"table3": …, "ours_vs_paper": …}``. ``table3`` has columns ``Method, Input size, Test1 MRE,
        Test1 2mm … Test1 4mm, Test2 MRE, Test2 2mm … Test2 4mm, source``: the paper's literature rows and its
        FARNet row (``source = paper``), our row ``FARNet (ours, <profile>)`` and, when present, our
        sub-pixel row (``source = ours, beyond the paper``). ``ours_vs_paper`` has one row per metric with
        ``Paper, Ours, Difference`` (ours − paper), plus sub-pixel columns when present.

    Raises:
        ValueError: a split or radius is missing from ``metrics`` or from the paper's table.
        DataError: naming ``results/gpu/run.json``, when the GPU run is not Table 3's run
            (:func:`~farnet.report.paper.check_gpu_run`).
    """
    section = paper["table3"]
    radii = [str(r) for r in section["radii_mm"]]
    profile = run_info.get("profile", "unknown profile")
    our_size = _size_label(run_info.get("input_hw"))
    rows, paper_farnet = _paper_rows(section, radii)

    ours = _table3_values(metrics, radii, "metrics")
    protocol = profile == "paper"
    rows.append({**_table3_row(f"FARNet (ours, {profile})", our_size, ours, "ours"),
                 **_table3_intervals(predictions, "argmax", paper_farnet if protocol else None)})
    columns = {}  # comparison column suffix → our values under it, beside the main "Ours"
    for suffix, (short, label) in BEYOND_ARGMAX.items():
        if all(f"{split}{suffix}" in metrics for split in TEST_SPLITS):
            values = _table3_values(metrics, radii, "metrics", suffix=suffix)
            rows.append({**_table3_row(f"FARNet (ours, {profile}, {label})", our_size, values,
                                       "ours, beyond the paper"),
                         **_table3_intervals(predictions, suffix.lstrip("_"), None)})
            columns[(f"{short}, beyond the paper", short)] = values
    if gpu is not None:
        check_gpu_run(gpu, section)
        values = _table3_values(gpu.metrics, radii, str(gpu.folder / "metrics.json"))
        rows.append(_table3_row(method_label(gpu), _size_label(gpu.run["input_hw"]), values, "ours, GPU"))
        columns[("GPU", "GPU")] = values
    return {"table3": pd.DataFrame(rows), "ours_vs_paper": _comparison(ours, paper_farnet, columns)}


def _table3_intervals(predictions: pd.DataFrame | None, decode: str,
                      paper_farnet: Mapping[str, float] | None) -> dict[str, str]:
    """Each test set's MRE and SDR@2mm intervals over its images for one decoder (nothing without predictions),
    and whether the paper's FARNet MRE lies inside ours (given ``paper_farnet``: a run of the paper's protocol)."""
    if predictions is None or decode not in set(predictions["decode"]):
        return {}
    out = {}
    for key, label in TEST_SPLITS.items():
        ranges = intervals.error_intervals(intervals.image_errors(predictions, key, decode)[1])
        for name, (_, low, high) in ranges.items():
            out[f"{label} {name} 95% CI"] = intervals.format_interval(low, high)
        if paper_farnet is not None:
            out[f"paper {label} MRE in CI"] = intervals.inside(paper_farnet[f"{label} MRE"], *ranges["MRE"][1:])
    return out


def _paper_rows(section: Mapping[str, Any], radii: Sequence[str]) -> tuple[list[dict], dict[str, float]]:
    """Table 3's rows of the paper, and the values of its FARNet row (the one marked ``farnet: true``)."""
    rows, paper_farnet = [], None
    for entry in section["rows"]:
        name = "FARNet (paper)" if entry.get("farnet") else entry["method"]
        values = _table3_values(entry, radii, f"paper table3 row {entry['method']!r}")
        rows.append(_table3_row(name, _size_label(entry.get("input_size")), values, "paper"))
        if entry.get("farnet"):
            paper_farnet = values
    if paper_farnet is None:
        raise ValueError("paper table3 has no row marked 'farnet: true'")
    return rows, paper_farnet


def _comparison(ours: Mapping[str, float], paper_farnet: Mapping[str, float],
                columns: Mapping[tuple[str, str], Mapping[str, float]]) -> pd.DataFrame:
    """Ours vs the paper's FARNet, then ``Ours (<name>)`` and ``Difference (<short>)`` for each further row of
    ours (keyed ``(name, short)``)."""
    units = {name: ("mm" if name.endswith("MRE") else "%") for name in ours}
    comparison = ours_vs_paper(ours, paper_farnet, units)
    for (name, short), values in columns.items():
        extra = ours_vs_paper(values, paper_farnet, units).set_index("Metric").reindex(comparison["Metric"])
        comparison[f"Ours ({name})"] = extra["Ours"].to_numpy()
        comparison[f"Difference ({short})"] = extra["Difference"].to_numpy()
    return comparison


def _table3_values(source: Mapping[str, Any], radii: Sequence[str], where: str,
                   suffix: str = "") -> dict[str, float]:
    """One row's values: each test set's metrics (``<split><suffix>`` of ``source``) under its label."""
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
