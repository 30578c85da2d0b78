"""The tables beyond the paper (docs/design.md §5), all on ISBI 2015's test sets.

The doctors' disagreement as the human reference (:func:`inter_observer_table`), the decoders beyond argmax
(:func:`decoding_table`), seed replicates as mean ± SD (:func:`seeds_table`) and the error of each landmark
(:func:`per_landmark_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from farnet.evaluation.metrics import summarize
from farnet.report import intervals
from farnet.report.columns import BEYOND_ARGMAX, EXTRA_RADII_MM, OUTLIERS, split_metrics
from farnet.report.results import TEST_SPLITS, Results


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
    """The decoders beyond the paper (sub-pixel, guided) against argmax, for each ISBI run on each test set; with
    the run's predictions, each decoder's MRE difference from argmax gets its paired 95 % interval over the
    images and a verdict (:mod:`farnet.report.intervals`)."""
    rows = []
    for run in runs:
        preds = results.predictions(run) if results.has_predictions(run) else None
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
                if preds is not None and suffix.lstrip("_") in set(preds["decode"]):
                    ids, argmax = intervals.image_errors(preds, split)
                    other_ids, other = intervals.image_errors(preds, split, suffix.lstrip("_"))
                    diff, low, high = intervals.paired_difference(other, other_ids, argmax, ids)
                    row.update({f"Δ {name} 95% CI": intervals.format_interval(low, high),
                                f"{name} verdict": intervals.verdict(diff, low, high)})
            rows.append(row)
    return pd.DataFrame(rows)


def seeds_table(results: Results, groups: Sequence[Sequence[str]]) -> pd.DataFrame:
    """Mean and SD of each metric over each group of seed replicates (runs trained alike), per test set; each
    group is named by its runs and how they were trained (profile, input, epochs)."""
    rows = []
    for runs in groups:
        info = results.info(runs[0])
        hw = info.get("input_hw") or ["?", "?"]
        trained = f"{info['profile']}, {hw[0]}×{hw[1]}, {info['epochs']} epochs"
        for split in TEST_SPLITS:
            values = pd.DataFrame([split_metrics(results.metrics(run, split), EXTRA_RADII_MM) for run in runs])
            rows.append({"Split": split, "trained": trained, "runs": ", ".join(runs),
                         **{f"{c} mean": values[c].mean() for c in values},
                         **{f"{c} SD": values[c].std(ddof=1) if len(runs) > 1 else np.nan for c in values}})
    return pd.DataFrame(rows)


def seed_intervals_table(results: Results, runs: Sequence[str]) -> pd.DataFrame:
    """Each seed replicate's MRE and SDR@2mm per test set, with its 95 % interval over the images
    (:mod:`farnet.report.intervals`; empty where the run's predictions are not here)."""
    rows = []
    for run in runs:
        preds = results.predictions(run) if results.has_predictions(run) else None
        for split in TEST_SPLITS:
            m = results.metrics(run, split)
            row = {"Split": split, "run": run, "seed": results.info(run)["seed"], "MRE": m["mre_mm"],
                   "2mm": m["sdr"]["2.0"]}
            if preds is not None:
                ranges = intervals.error_intervals(intervals.image_errors(preds, split)[1])
                row.update({f"{name} 95% CI": intervals.format_interval(low, high)
                            for name, (_, low, high) in ranges.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def per_landmark_table(results: Results, run: str) -> pd.DataFrame:
    """MRE and SD of each landmark (numbered from 1) per split, argmax decoding; with the run's predictions,
    each landmark's MRE gets its 95 % interval over the images (:mod:`farnet.report.intervals`)."""
    per_lm = results.per_landmark(run)
    per_lm = per_lm[per_lm["decode"] == "argmax"]
    wide = per_lm.pivot_table(index=["landmark", "name"], columns="split", values=["mre_mm", "sd_mm"])
    wide.columns = [f"{split} {'MRE' if v == 'mre_mm' else 'SD'}" for v, split in wide.columns]
    wide = wide.reset_index()
    if results.has_predictions(run):
        preds = results.predictions(run)
        for split in sorted(set(per_lm["split"]) & set(preds["split"])):
            errors = intervals.image_errors(preds, split)[1]  # (N, K), columns in landmark order
            ranges = [intervals.mean_interval(errors[:, k]) for k in range(errors.shape[1])]
            wide[f"{split} MRE 95% CI"] = [intervals.format_interval(low, high) for _, low, high in
                                           (ranges[int(k)] for k in wide["landmark"])]
    wide["landmark"] += 1
    return wide
