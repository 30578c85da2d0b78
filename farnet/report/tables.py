"""The paper's Tables 1–5 and the extra tables beyond it, rebuilt from ``results/`` beside the paper's numbers.

The paper's numbers live in ``reference/paper_tables.yaml`` exactly as printed and sit only in rows marked
``paper``; each of our numbers is followed by its difference to the paper's (ours − paper, docs/design.md §5).
A table finds its runs by what their run info says they are, never by their names: Table 1 takes one FARNet run
per backbone, Table 2 one run per ablation, Tables 4 and 5 one FARNet run per fold (:func:`table1_runs` …),
all with seed 0. A row of the paper that has no run yet is listed as "not run"; when several runs match one
row, the first by name is shown and the table's header says so. A run of ``farnet replicate`` on a lent GPU,
imported into ``results/gpu/`` (:mod:`farnet.report.gpu`), adds a row of its own to Table 3, with its own
provenance under the table's. :func:`write_table` writes Markdown (under the runs' provenance) and CSV, both
atomically.
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

import numpy as np
import pandas as pd
import yaml

from farnet.data.registry import get_dataset
from farnet.core.errors import DataError
from farnet.core.fileio import write_json, write_text
from farnet.evaluation.metrics import summarize
from farnet.core.fileio import device_slug
from farnet.report.gpu import GpuRun, find_gpu_run, method_label
from farnet.core.provenance import provenance_header
from farnet.report.results import Results, TableRuns

PAPER_TABLES_RESOURCE = "reference/paper_tables.yaml"
#: the paper's FARNet: Table 3, the DenseNet-121 row of Table 1, the MSFA+FR+EWC row of Table 2, Tables 4 and 5
FARNET = {"architecture": "farnet", "backbone": "densenet121", "fusion": "concat", "refinement": "guided",
          "loss": "ewc"}
#: Table 2's rows as model and loss settings (§4.4: L2 up to MSFA+FR, then Adaptive Wing and EWC). The
#: baselines have no fusion or refinement, and the U-Net no backbone, so those keys are not matched.
TABLE2_CONFIGS = {
    "UNet": {"architecture": "unet", "loss": "l2"},
    "FPN": {"architecture": "fpn", "backbone": "densenet121", "loss": "l2"},
    "MSFA(+)": {**FARNET, "fusion": "add", "refinement": "none", "loss": "l2"},
    "MSFA": {**FARNET, "refinement": "none", "loss": "l2"},
    "MSFA+FR*": {**FARNET, "refinement": "naive", "loss": "l2"},
    "MSFA+FR": {**FARNET, "loss": "l2"},
    "MSFA+FR+AW": {**FARNET, "loss": "awing"},
    "MSFA+FR+EWC": FARNET,
}
EXTRA_RADII_MM = ("2.0", "2.5", "3.0", "4.0")
OUTLIERS = ">10mm %"  # the % of landmarks beyond 10 mm (metrics.OUTLIER_MM), reported for every run of ours
#: the decoders beyond the paper's argmax, each in rows or columns of its own: metrics key suffix -> label
BEYOND_ARGMAX = {"_subpixel": ("sub-pixel", "sub-pixel decoding"),
                 "_guided": ("guided", "guided decoding: the fine peak near the coarse peak")}
TEST_SPLITS = {"test1": "Test1", "test2": "Test2"}
SECTION_TITLES = {
    "table3": "Table 3 — comparison with prior methods on the ISBI 2015 cephalometric dataset "
              "(rows marked `paper` are copied from the paper)",
    "ours_vs_paper": "Ours vs paper (difference = ours − paper; MRE in mm, SDR in %)",
}


def load_paper_tables() -> dict[str, Any]:
    """The paper's Tables 1–5 (``table1`` … ``table5``) from the package's reference YAML."""
    resource = resources.files("farnet.report").joinpath(PAPER_TABLES_RESOURCE)
    tables = yaml.safe_load(resource.read_text(encoding="utf-8"))
    missing = [f"table{i}" for i in range(1, 6) if f"table{i}" not in tables]
    if missing:
        raise DataError(str(resource), f"missing sections {missing}")
    return tables


# ----------------------------------------------------------------------------------------------------------
# Which run fills each row


def table3_runs(results: Results, paper_table: Mapping[str, Any]) -> TableRuns:
    """The run of Table 3: the paper's FARNet on its dataset with seed 0 (one row, ``"FARNet"``)."""
    return results.select({"FARNet": {"dataset": paper_table["dataset"], **FARNET, "seed": 0}})


def table1_runs(results: Results, paper_table: Mapping[str, Any]) -> TableRuns:
    """Table 1: for each of the paper's backbones (row label e.g. "DenseNet-121"), FARNet on it with seed 0."""
    return results.select({row["method"]: {"dataset": paper_table["dataset"], **FARNET,
                                           "backbone": row["backbone"], "seed": 0}
                           for row in paper_table["rows"]})


def table2_runs(results: Results, paper_table: Mapping[str, Any]) -> TableRuns:
    """Table 2: for each of the paper's ablations, the run with its :data:`TABLE2_CONFIGS` and seed 0.

    Raises:
        ValueError: the paper's rows and :data:`TABLE2_CONFIGS` name different methods.
    """
    methods = [row["method"] for row in paper_table["rows"]]
    if set(methods) != set(TABLE2_CONFIGS):
        raise ValueError(f"paper table2 rows {methods} differ from TABLE2_CONFIGS {list(TABLE2_CONFIGS)}")
    return results.select({method: {"dataset": paper_table["dataset"], **TABLE2_CONFIGS[method], "seed": 0}
                           for method in methods})


def fold_runs(results: Results, paper_table: Mapping[str, Any]) -> TableRuns:
    """Tables 4 and 5: FARNet with seed 0 on each fold of the paper's cross-validation (rows "fold 1", …)."""
    return results.select({f"fold {k}": {"dataset": paper_table["dataset"], **FARNET, "seed": 0, "fold": k}
                           for k in range(1, paper_table["folds"] + 1)})


def seed_runs(results: Results, paper_table: Mapping[str, Any]) -> TableRuns:
    """Seed replicates of Table 3's run (beyond the paper): its settings with each seed other than 0."""
    config = {"dataset": paper_table["dataset"], **FARNET}
    seeds = sorted({results.info(run)["seed"] for run in results.matching(**config)} - {0})
    return results.select({f"seed {seed}": {**config, "seed": seed} for seed in seeds})


def runs_header(results: Results, runs: TableRuns) -> str:
    """The provenance block of the first run shown, one line per row with what differs between rows, and
    warnings when the rows were trained differently or a row matched several runs."""
    if not runs.present:
        return "> **No run of this table has results yet.**\n"
    header = provenance_header(results.info(runs.first))
    lines = []
    for label, run in runs.rows.items():
        if run is None:
            lines.append(f"| {label} | not run | | | | | |")
            continue
        i = results.info(run)
        hw = i.get("input_hw") or ["?", "?"]
        lines.append(f"| {run} | {i['profile']} | {hw[0]}×{hw[1]} | {i.get('n_train_images', '?')} | "
                     f"{i['epochs']} | {i['steps']} | {i['train_wall_s']} |")
    table = "\n".join(["| run | profile | input (H×W) | train images | epochs | steps | train s |",
                       "|---|---|---|---|---|---|---|", *lines])
    return (header + "\nRuns in this table (the header above describes the first; rows may differ):\n\n" + table
            + "\n" + _settings_warning(results, runs.present) + _duplicates_warning(runs))


#: what must match for two rows of one table to be compared with each other
_COMPARABLE_KEYS = ("profile", "input_hw", "epochs", "full_set", "pretrained", "optimizer", "lr", "sigma_px")


def _settings_warning(results: Results, runs: Sequence[str]) -> str:
    """A warning when the runs of one table were trained with different settings (a reduced profile may give
    one row more images or a larger input than the others)."""
    differ = [key for key in _COMPARABLE_KEYS
              if len({json.dumps(results.info(r).get(key)) for r in runs}) > 1]
    if not differ:
        return ""
    return (f"\n**These rows were not trained alike ({', '.join(differ)} differ; see the list above): a difference "
            "between them is not the effect of the method alone.**\n")


def _duplicates_warning(runs: TableRuns) -> str:
    return "".join(f"\n**{len(found)} runs match row {label} ({', '.join(found)}): the row shows {found[0]}, "
                   "the first by name.**\n" for label, found in runs.duplicates.items())


# ----------------------------------------------------------------------------------------------------------
# Generic pieces


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


# ----------------------------------------------------------------------------------------------------------
# Tables 1 and 2 (ISBI 2015 Test1)


def methods_table(results: Results, paper_table: Mapping[str, Any], runs: TableRuns) -> pd.DataFrame:
    """Tables 1 and 2: for each of the paper's methods, its row, ours and ours − paper (``Source`` column).

    Args:
        results: the results folder.
        paper_table: ``table1`` or ``table2`` of :func:`load_paper_tables`.
        runs: :func:`table1_runs` or :func:`table2_runs` output.
    """
    radii = paper_table["radii_mm"]
    rows = []
    for paper_row in paper_table["rows"]:
        method, run = paper_row["method"], runs.rows[paper_row["method"]]
        theirs = split_metrics(paper_row, radii, where=f"paper {method}")
        rows.append({"Method": method, "Source": "paper", **theirs})
        if run is None:
            rows.append({"Method": method, "Source": "ours: not run", **{k: np.nan for k in theirs}})
            continue
        mine = split_metrics(results.metrics(run, paper_table["split"]), radii, where=f"ours {method} ({run})")
        rows.append({"Method": method, "Source": "ours", **mine})
        rows.append({"Method": method, "Source": "ours − paper", **{k: mine[k] - theirs[k] for k in theirs}})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------
# Table 3 (ISBI 2015 Test1 and Test2)


def table3(metrics: Mapping[str, Any], run_info: Mapping[str, Any],
           paper: Mapping[str, Any], gpu: GpuRun | None = None) -> dict[str, pd.DataFrame]:
    """Table 3 (ISBI 2015, Test1 and Test2) with our row, plus the ours-vs-paper comparison.

    Args:
        metrics: the run's metrics: ``test1`` and ``test2`` (paper's argmax decoding) and optionally
            ``test1_subpixel`` / ``test2_subpixel`` (beyond the paper).
        run_info: the run's info (``profile`` and ``input_hw`` are used here).
        paper: :func:`load_paper_tables` output.
        gpu: the run imported into ``results/gpu/``: one more row (argmax, ``source = ours, GPU``), labelled by
            :func:`farnet.report.gpu.method_label`, and ``Ours (GPU)`` / ``Difference (GPU)`` columns in the
            comparison. None: the table as without it.

    Returns:
        ``{"table3": …, "ours_vs_paper": …}``. ``table3`` has columns ``Method, Input size, Test1 MRE,
        Test1 2mm … Test1 4mm, Test2 MRE, Test2 2mm … Test2 4mm, source``: the paper's literature rows and its
        FARNet row (``source = paper``), our row ``FARNet (ours, <profile>)`` and, when present, our
        sub-pixel row (``source = ours, beyond the paper``). ``ours_vs_paper`` has one row per metric with
        ``Paper, Ours, Difference`` (ours − paper), plus sub-pixel columns when present.

    Raises:
        ValueError: a split or radius is missing from ``metrics`` or from the paper's table.
        DataError: naming ``results/gpu/run.json``, when the GPU run is not Table 3's run (:func:`check_gpu_run`).
    """
    section = paper["table3"]
    radii = [str(r) for r in section["radii_mm"]]
    profile = run_info.get("profile", "unknown profile")
    our_size = _size_label(run_info.get("input_hw"))

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
    beyond = {}
    for suffix, (short, label) in BEYOND_ARGMAX.items():
        if all(f"{split}{suffix}" in metrics for split in TEST_SPLITS):
            beyond[short] = _table3_values(metrics, radii, "metrics", suffix=suffix)
            rows.append(_table3_row(f"FARNet (ours, {profile}, {label})", our_size, beyond[short],
                                    "ours, beyond the paper"))
    if gpu is not None:
        check_gpu_run(gpu, section)
        on_gpu = _table3_values(gpu.metrics, radii, str(gpu.folder / "metrics.json"))
        rows.append(_table3_row(method_label(gpu), _size_label(gpu.run["input_hw"]), on_gpu, "ours, GPU"))

    units = {name: ("mm" if name.endswith("MRE") else "%") for name in ours}
    comparison = ours_vs_paper(ours, paper_farnet, units)
    for short, values in beyond.items():
        extra = ours_vs_paper(values, paper_farnet, units).set_index("Metric").reindex(comparison["Metric"])
        comparison[f"Ours ({short}, beyond the paper)"] = extra["Ours"].to_numpy()
        comparison[f"Difference ({short})"] = extra["Difference"].to_numpy()
    if gpu is not None:
        extra = ours_vs_paper(on_gpu, paper_farnet, units).set_index("Metric").reindex(comparison["Metric"])
        comparison["Ours (GPU)"] = extra["Ours"].to_numpy()
        comparison["Difference (GPU)"] = extra["Difference"].to_numpy()
    return {"table3": pd.DataFrame(rows), "ours_vs_paper": comparison}


def check_gpu_run(gpu: GpuRun, paper_table: Mapping[str, Any]) -> None:
    """Raise :class:`~farnet.core.errors.DataError` naming ``run.json`` unless the GPU run is Table 3's run: the
    paper's FARNet on its dataset with seed 0 (what :func:`table3_runs` selects)."""
    expected = {"dataset": paper_table["dataset"], **FARNET, "seed": 0}
    differ = {key: gpu.run.get(key) for key, value in expected.items() if gpu.run.get(key) != value}
    if differ:
        raise DataError(gpu.folder / "run.json", f"run {gpu.run.get('run')!r} is not Table 3's run "
                                                 f"({expected}): it has {differ}")


def gpu_header(gpu: GpuRun, cpu_info: Mapping[str, Any]) -> str:
    """The provenance of Table 3's GPU row, in the form of :func:`runs_header`'s, with the protocol the run
    states (input size included), the GPU, its benchmark, and a warning when it was trained unlike the CPU row.
    """
    run, bench = gpu.run, gpu.benchmark
    timing = "no benchmark in the run"
    if bench is not None:
        hw = bench.get("input_hw") or run["input_hw"]
        timing = (f"training step {_seconds(bench.get('train_step'))}, inference {_seconds(bench.get('inference'))} "
                  f"at {hw[0]}×{hw[1]}, batch {bench.get('batch_size', 1)} "
                  f"(`results/benchmarks/cuda-{device_slug(gpu.device_name)}.json`)")
    extra = [
        f"- GPU: {gpu.device_name}; torch {run['torch']}; fast path {run.get('fast_path') or run.get('precision')}"
        + (f" (benchmark: {bench['fast_path']})" if bench is not None and bench["fast_path"] != run.get("fast_path")
           else "") + f"; step path {run.get('step_path') or 'eager'} (`farnet.training.steps`)",
        f"- Benchmark: {timing}",
        f"- Run: status {run['status']}"
        + (f", {run['wall_s']} s from unpacking the carry to the end" if run.get("wall_s") is not None else ""),
    ]
    block = provenance_header(run, gaps=run["replication_gaps"], extra=extra)
    differ = [key for key in _COMPARABLE_KEYS if json.dumps(run.get(key)) != json.dumps(cpu_info.get(key))]
    warning = (f"\n**The GPU row was not trained like run {cpu_info.get('run')} ({', '.join(differ)} differ): a "
               "difference between them is not the effect of the hardware alone.**\n" if differ else "")
    return ("\nThe GPU row: `farnet replicate` on a lent GPU, imported by `farnet replicate-import` into "
            "`results/gpu/`:\n\n" + block + warning)


def _seconds(measurement: Mapping[str, Any] | None) -> str:
    if not measurement or measurement.get("median_s") is None:
        return "not measured"
    return f"{measurement['median_s']:.3f} s"


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
# Tables 4 (hand) and 5 (spine)


def table4(results: Results, paper_table: Mapping[str, Any], runs: TableRuns) -> pd.DataFrame:
    """Hand: the paper's rows, then ours pooled over the folds' test images (each image tested once).

    Args:
        results: the results folder.
        paper_table: ``table4`` of :func:`load_paper_tables`.
        runs: :func:`fold_runs` output for it.
    """
    radii = paper_table["radii_mm"]
    rows = []
    for row in paper_table["rows"]:
        rows.append({"Method": row["method"], "Source": "paper", "MRE": row["mre_mm"], "SD": row["sd_mm"],
                     **{radius_label(r): row["sdr"][r] for r in radii}, "images": np.nan})
    if not runs.present:
        rows.append({"Method": "FARNet (ours)", "Source": "ours: not run"})
        return pd.DataFrame(rows)
    preds = pd.concat([results.predictions(run) for run in runs.present])
    argmax = preds[preds["decode"] == "argmax"]
    k = argmax["landmark"].nunique()
    errors = argmax["error_mm"].to_numpy().reshape(-1, k)  # (N, K): rows are written image by image
    summary = summarize(errors, [float(r) for r in radii])
    ours = {"MRE": summary["mre_mm"], "SD": summary["sd_mm"],
            **{radius_label(r): summary["sdr"][f"{float(r):.1f}"] for r in radii}}
    paper_farnet = next(r for r in rows if r["Method"].startswith("FARNet"))
    profile = results.info(runs.first)["profile"]
    rows.append({"Method": f"FARNet (ours, {profile})", "Source": "ours", **ours, "images": errors.shape[0]})
    rows.append({"Method": "ours − paper FARNet", "Source": "ours − paper",
                 **{key: ours[key] - paper_farnet[key] for key in ours}, "images": np.nan})
    return pd.DataFrame(rows)


def _hand_note(results: Results, runs: TableRuns) -> str:
    """A warning when the hand images are only a sample of the data set (the mirror holds few)."""
    for run in runs.present:
        info = results.info(run)
        present, listed = info.get("images_present"), info.get("images_listed")
        if present is not None and listed is not None and present < listed:
            return (f"\n**Only {present} of the {listed} hand images exist here. Our row pools the test images "
                    f"of the folds that ran (column `images`); it is not a replication of Table 4.**\n")
    return ""


def table5(results: Results, paper_table: Mapping[str, Any], runs: TableRuns) -> pd.DataFrame:
    """Spine: the paper's rows, then ours on the 50 held-out test images (mean ± SD over the fold models), on
    each fold's validation images, and on the 128 further AASCE images, with Cobb-angle SMAPE.

    Args:
        results: the results folder.
        paper_table: ``table5`` of :func:`load_paper_tables`.
        runs: :func:`fold_runs` output for it.
    """
    rows = [{"Method": r["method"], "Source": "paper", "Split": "test (50)", "MSE": r["mse"], "ρ": r["rho"]}
            for r in paper_table["rows"]]
    if not runs.present:
        rows.append({"Method": "FARNet (ours)", "Source": "ours: not run"})
        return pd.DataFrame(rows)
    profile = results.info(runs.first)["profile"]
    paper_farnet = next(r for r in paper_table["rows"] if r.get("farnet"))
    for split, label in (("test", "test (50)"), ("fold_val", "fold validation"), ("aasce_test", "AASCE test (128)")):
        per_fold = [results.metrics(run, f"fold{results.info(run)['fold']}_val" if split == "fold_val" else split)
                    for run in runs.present]
        mse = np.array([m["mse"] for m in per_fold])
        rho = np.array([m["rho"] for m in per_fold])
        smape = np.array([m.get("cobb_smape", np.nan) for m in per_fold])
        row = {"Method": f"FARNet (ours, {profile}, {len(per_fold)} folds)", "Source": "ours", "Split": label,
               "MSE": mse.mean(), "MSE SD (folds)": mse.std(ddof=1) if len(mse) > 1 else np.nan,
               "ρ": rho.mean(), "ρ SD (folds)": rho.std(ddof=1) if len(rho) > 1 else np.nan,
               "Cobb SMAPE % (beyond the paper)": np.nanmean(smape) if np.isfinite(smape).any() else np.nan}
        rows.append(row)
        if split == "test":
            rows.append({"Method": "ours − paper FARNet", "Source": "ours − paper", "Split": label,
                         "MSE": row["MSE"] - paper_farnet["mse"], "ρ": row["ρ"] - paper_farnet["rho"]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------
# Beyond the paper


def inter_observer(isbi_root: Path, radii_mm: Sequence[float]) -> dict | None:
    """Senior vs junior radial errors per ISBI split (None when the raw data is not fetched)."""
    from farnet.data import isbi

    if not (isbi_root / "AnnotationsByMD").is_dir():
        return None
    out = {}
    for split in ("train", "test1", "test2"):
        senior = isbi.read_isbi2015(isbi_root, split, annotator="senior")
        junior = isbi.read_isbi2015(isbi_root, split, annotator="junior")
        a = np.stack([s.landmarks_px for s in senior])
        b = np.stack([s.landmarks_px for s in junior])
        out[split] = summarize(np.linalg.norm(a - b, axis=-1) * isbi.SPACING_MM, radii_mm)
    return out


def inter_observer_table(results: Results, isbi_root: Path, run: str | None) -> pd.DataFrame | None:
    """The doctors' disagreement per split, then ``run`` (Table 3's) against their mean on the test sets;
    None when the raw ISBI data is not fetched."""
    observer = inter_observer(isbi_root, [float(r) for r in EXTRA_RADII_MM])
    if observer is None:
        return None
    rows = [{"Reference": "senior vs junior doctor (human)", "Split": split, **split_metrics(m, EXTRA_RADII_MM)}
            for split, m in observer.items()]
    if run is not None:
        rows += [{"Reference": "FARNet (ours) vs mean of both", "Split": split,
                  **split_metrics(results.metrics(run, split), EXTRA_RADII_MM)} for split in TEST_SPLITS]
    return pd.DataFrame(rows)


def decoding_table(results: Results, runs: Sequence[str]) -> pd.DataFrame:
    """The decoders beyond the paper (sub-pixel, guided) against argmax, for each ISBI run on each test set."""
    rows = []
    for run in runs:
        for split in TEST_SPLITS:
            a = split_metrics(results.metrics(run, split), EXTRA_RADII_MM)
            row = {"Run": run, "Split": split, "MRE argmax": a["MRE"], "2mm argmax": a["2mm"],
                   f"{OUTLIERS} argmax": a.get(OUTLIERS, np.nan)}
            for suffix, (name, _) in BEYOND_ARGMAX.items():
                try:
                    b = split_metrics(results.metrics(run, f"{split}{suffix}"), EXTRA_RADII_MM)
                except (KeyError, ValueError):  # results made before this decoder existed
                    continue
                row.update({f"MRE {name}": b["MRE"], f"Δ MRE {name}": b["MRE"] - a["MRE"], f"2mm {name}": b["2mm"],
                            f"{OUTLIERS} {name}": b.get(OUTLIERS, np.nan)})
            rows.append(row)
    return pd.DataFrame(rows)


def seeds_table(results: Results, runs: Sequence[str]) -> pd.DataFrame:
    """Mean and SD over the seed replicates ``runs`` of each metric, per test set."""
    rows = []
    for split in TEST_SPLITS:
        values = pd.DataFrame([split_metrics(results.metrics(run, split), EXTRA_RADII_MM) for run in runs])
        rows.append({"Split": split, "runs": len(runs), **{f"{c} mean": values[c].mean() for c in values},
                     **{f"{c} SD": values[c].std(ddof=1) if len(runs) > 1 else np.nan for c in values}})
    return pd.DataFrame(rows)


def per_landmark_table(results: Results, run: str) -> pd.DataFrame:
    """MRE and SD of each landmark (numbered from 1) per split, argmax decoding."""
    per_lm = results.per_landmark(run)
    per_lm = per_lm[per_lm["decode"] == "argmax"]
    wide = per_lm.pivot_table(index=["landmark", "name"], columns="split", values=["mre_mm", "sd_mm"])
    wide.columns = [f"{split} {'MRE' if v == 'mre_mm' else 'SD'}" for v, split in wide.columns]
    wide = wide.reset_index()
    wide["landmark"] += 1
    return wide


# ----------------------------------------------------------------------------------------------------------
# Output


def make_tables(results_dir: Path, raw_root: Path) -> list[Path]:
    """Write ``results/tables/table{1..5}.{md,csv}`` and the extra tables; returns the paths written."""
    results = Results(results_dir)
    paper = load_paper_tables()
    out = results.root / "tables"
    t1, t2 = table1_runs(results, paper["table1"]), table2_runs(results, paper["table2"])
    t3, seeds = table3_runs(results, paper["table3"]), seed_runs(results, paper["table3"])
    hand, spine = fold_runs(results, paper["table4"]), fold_runs(results, paper["table5"])
    farnet, gpu = t3.first, find_gpu_run(results.root)

    def write(name: str, frames, header: str, title: str, decimals: int = 2) -> list[Path]:
        return write_table(frames, out / f"{name}.md", out / f"{name}.csv", header, title=title, decimals=decimals)

    written: list[Path] = []
    if farnet is not None:
        header = runs_header(results, t3) + (gpu_header(gpu, results.info(farnet)) if gpu is not None else "")
        written += write("table3", table3(results.metrics(farnet), results.info(farnet), paper, gpu), header,
                         "Table 3: FARNet vs prior methods on the ISBI 2015 cephalometric dataset")
    written += write("table1", methods_table(results, paper["table1"], t1), runs_header(results, t1),
                     "Table 1: backbones on ISBI 2015 Test1 (MRE in mm, SDR in %)")
    written += write("table2", methods_table(results, paper["table2"], t2), runs_header(results, t2),
                     "Table 2: ablations on ISBI 2015 Test1 (MRE in mm, SDR in %)")
    written += write("table4", table4(results, paper["table4"], hand),
                     runs_header(results, hand) + _hand_note(results, hand),
                     "Table 4: hand X-rays, 3-fold cross-validation (MRE ± SD in mm, SDR in %)")
    written += write("table5", table5(results, paper["table5"], spine), runs_header(results, spine),
                     "Table 5: spinal AP X-rays (MSE in fractions of the image, Pearson ρ)", decimals=4)

    observer = inter_observer_table(results, raw_root / paper["table3"]["dataset"], farnet)
    if observer is not None:
        written += write("inter_observer", observer, runs_header(results, t3) if farnet is not None else "",
                         "Inter-observer error on ISBI 2015 (the human reference; MRE in mm, SDR in %)")
    isbi_runs = list(dict.fromkeys([*t1.present, *t2.present, *seeds.present]))
    if isbi_runs:
        written += write("decoding", decoding_table(results, isbi_runs), runs_header(results, TableRuns.of(isbi_runs)),
                         "Sub-pixel decoding vs argmax (beyond the paper; MRE in mm, SDR in %)")
    if seeds.present:
        written += write("seeds", seeds_table(results, seeds.present), runs_header(results, seeds),
                         "Seed replicates of FARNet (mean ± SD over seeds; MRE in mm, SDR in %)")
    if farnet is not None:
        written += write("per_landmark", per_landmark_table(results, farnet), runs_header(results, t3),
                         "Per-landmark error of FARNet on ISBI 2015 (mm)")
    written.append(write_json(results.root / "summary.json", summary(results, t3, t2, hand, spine)))
    return written


def summary(results: Results, t3: TableRuns, t2: TableRuns, hand: TableRuns, spine: TableRuns) -> dict:
    """The headline number of each table (``results/summary.json``, a DVC metric, what ``make exp-show`` shows):
    FARNet's Test1/Test2 MRE and SDR@2mm (Table 3), each Table 2 row's Test1 MRE, the hand MRE over the folds
    (Table 4) and the spine test MSE, ρ and Cobb-angle SMAPE over the folds (Table 5). Rows not run are left out.
    """
    out: dict[str, Any] = {}
    if t3.first is not None:
        for split in TEST_SPLITS:
            m = results.metrics(t3.first, split)
            out[f"farnet_{split}_mre_mm"] = m["mre_mm"]
            out[f"farnet_{split}_sdr_2mm"] = m["sdr"]["2.0"]
    out["table2_test1_mre_mm"] = {row: results.metrics(run, "test1")["mre_mm"] for row, run in t2.rows.items() if run}
    folds = [results.metrics(run, get_dataset(results.info(run)["dataset"]).eval_splits(results.info(run)["fold"])[0])
             for run in hand.present]
    if folds:
        out["hand_mre_mm"] = float(np.mean([m["mre_mm"] for m in folds]))
    tests = [results.metrics(run, "test") for run in spine.present]
    for key in ("mse", "rho", "cobb_smape"):
        values = [m[key] for m in tests if key in m]
        if values:
            out[f"spine_test_{key}"] = float(np.mean(values))
    return out


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
        header: Markdown placed above the tables, normally :func:`runs_header`.
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
