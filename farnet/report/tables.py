"""The tables stage: the paper's Tables 1–5 and the extra tables beyond it, rebuilt from ``results/``.

The paper's numbers sit only in rows marked ``paper``; each of our numbers is followed by its difference to the
paper's (ours − paper, docs/design.md §5). Which run fills each row, and the paper's numbers, come from
:mod:`farnet.report.paper`; the tables themselves from :mod:`~farnet.report.isbi_tables` (Tables 1–3),
:mod:`~farnet.report.fold_tables` (Tables 4 and 5) and :mod:`~farnet.report.extra_tables`. Each is written
under the provenance of its runs (:mod:`~farnet.report.headers`) as Markdown and CSV
(:mod:`~farnet.report.markdown`). A ``farnet replicate`` run imported into ``results/gpu/``
(:mod:`farnet.report.gpu`) adds a row of its own to Table 3, with its own provenance under the table's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from farnet.core.fileio import write_json
from farnet.data.registry import get_dataset
from farnet.report import intervals
from farnet.report.extra_tables import (decoding_table, inter_observer_table, per_landmark_table,
                                        seed_intervals_table, seeds_table)
from farnet.report.fold_tables import headline_folds, table4, table5
from farnet.report.gpu import find_gpu_run
from farnet.report.headers import gpu_header, hand_sample_note, runs_header
from farnet.report.isbi_tables import methods_table, table3
from farnet.report.markdown import write_table
# check_gpu_run is imported from here by `farnet replicate-import` (farnet.commands.replicate_import)
from farnet.report.paper import (
    check_gpu_run, fold_runs, load_paper_tables, row_seeds, seed_groups, table1_runs, table2_runs, table3_runs,
)
from farnet.report.results import TEST_SPLITS, Results, TableRuns

__all__ = ["check_gpu_run", "load_paper_tables", "make_tables", "summary"]


def make_tables(results_dir: Path, raw_root: Path) -> list[Path]:
    """Write ``results/tables/table{1..5}.{md,csv}`` and the extra tables; returns the paths written."""
    results = Results(results_dir)
    paper = load_paper_tables()
    out = results.root / "tables"
    t1, t2 = table1_runs(results, paper["table1"]), table2_runs(results, paper["table2"])
    t3 = table3_runs(results, paper["table3"])
    hand, spine = fold_runs(results, paper["table4"]), fold_runs(results, paper["table5"])
    farnet, gpu = t3.first, find_gpu_run(results.root)

    def write(name: str, frames, header: str, title: str, decimals: int = 2) -> list[Path]:
        return write_table(frames, out / f"{name}.md", out / f"{name}.csv", header, title=title, decimals=decimals)

    written: list[Path] = []
    if farnet is not None:
        header = runs_header(results, t3) + (gpu_header(gpu, results.info(farnet)) if gpu is not None else "")
        written += write("table3", table3(results.metrics(farnet), results.info(farnet), paper, gpu,
                                          results.predictions(farnet) if results.has_predictions(farnet) else None),
                         header,
                         "Table 3: FARNet vs prior methods on the ISBI 2015 cephalometric dataset")
    written += write("table1", methods_table(results, paper["table1"], t1, row_seeds(results, paper["table1"], t1)),
                     runs_header(results, t1), "Table 1: backbones on ISBI 2015 Test1 (MRE in mm, SDR in %)")
    written += write("table2", methods_table(results, paper["table2"], t2, row_seeds(results, paper["table2"], t2)),
                     runs_header(results, t2), "Table 2: ablations on ISBI 2015 Test1 (MRE in mm, SDR in %)")
    written += write("table4", table4(results, paper["table4"], hand),
                     runs_header(results, hand) + hand_sample_note(results, hand),
                     "Table 4: hand X-rays, 3-fold cross-validation (MRE ± SD in mm, SDR in %)")
    written += write("table5", table5(results, paper["table5"], spine), runs_header(results, spine),
                     "Table 5: spinal AP X-rays (MSE in fractions of the image, Pearson ρ)", decimals=4)

    observer = inter_observer_table(results, raw_root / paper["table3"]["dataset"], farnet)
    if observer is not None:
        written += write("inter_observer", observer, runs_header(results, t3) if farnet is not None else "",
                         "Inter-observer error on ISBI 2015 (the human reference; MRE in mm, SDR in %)")
    groups = seed_groups(results, paper["table3"])  # FARNet's runs trained alike, two or more
    isbi_runs = list(dict.fromkeys([*t1.present, *t2.present, *(run for group in groups for run in group)]))
    if isbi_runs:
        written += write("decoding", decoding_table(results, isbi_runs), runs_header(results, TableRuns.of(isbi_runs)),
                         "Sub-pixel decoding vs argmax (beyond the paper; MRE in mm, SDR in %)")
    if groups:
        replicates = [run for group in groups for run in group]
        written += write("seeds", {"over_seeds": seeds_table(results, groups),
                                   "each_seed": seed_intervals_table(results, replicates)},
                         runs_header(results, TableRuns.of(replicates)),
                         "Seed replicates of FARNet (MRE in mm, SDR in %; mean ± SD over the runs trained alike)")
    if farnet is not None:
        written += write("per_landmark", per_landmark_table(results, farnet), runs_header(results, t3),
                         "Per-landmark error of FARNet on ISBI 2015 (mm)")
    written.append(write_json(results.root / "summary.json", summary(results, t3, t2, hand, spine)))
    return written


def summary(results: Results, t3: TableRuns, t2: TableRuns, hand: TableRuns, spine: TableRuns) -> dict:
    """The headline number of each table (``results/summary.json``, a DVC metric, what ``make exp-show`` shows):
    FARNet's Test1/Test2 MRE (with its 95 % interval over the images) and SDR@2mm (Table 3), each Table 2 row's Test1 MRE, the hand MRE over the folds
    (Table 4) and the spine test MSE, ρ and Cobb-angle SMAPE over the folds trained longest alike (Table 5). Rows
    not run are left out.
    """
    out: dict[str, Any] = {}
    if t3.first is not None:
        preds = results.predictions(t3.first) if results.has_predictions(t3.first) else None
        for split in TEST_SPLITS:
            m = results.metrics(t3.first, split)
            out[f"farnet_{split}_mre_mm"] = m["mre_mm"]
            if preds is not None:  # its 95 % interval over the images (farnet.report.intervals)
                _, low, high = intervals.error_intervals(intervals.image_errors(preds, split)[1])["MRE"]
                out[f"farnet_{split}_mre_mm_low"], out[f"farnet_{split}_mre_mm_high"] = low, high
            out[f"farnet_{split}_sdr_2mm"] = m["sdr"]["2.0"]
    out["table2_test1_mre_mm"] = {row: results.metrics(run, "test1")["mre_mm"] for row, run in t2.rows.items() if run}
    folds = [results.metrics(run, get_dataset(results.info(run)["dataset"]).eval_splits(results.info(run)["fold"])[0])
             for run in hand.present]
    if folds:
        out["hand_mre_mm"] = float(np.mean([m["mre_mm"] for m in folds]))
    tests = [results.metrics(run, "test") for run in headline_folds(results, spine)]
    for key in ("mse", "rho", "cobb_smape"):
        values = [m[key] for m in tests if key in m]
        if values:
            out[f"spine_test_{key}"] = float(np.mean(values))
    return out
