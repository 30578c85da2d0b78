"""The paper's Tables 1–5: its numbers as printed, and which of our runs fills each of its rows.

The numbers live in ``reference/paper_tables.yaml`` exactly as the paper prints them (:func:`load_paper_tables`).
A table finds its runs by what their run info says they are, never by their names: Table 1 takes one FARNet run
per backbone, Table 2 one run per ablation, Table 3 the paper's FARNet, Tables 4 and 5 one FARNet run per fold,
all with seed 0 (:func:`table1_runs` …). A GPU run imported into ``results/gpu/`` must be Table 3's run too
(:func:`check_gpu_run`).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

from farnet.core.errors import DataError
from farnet.report.gpu import GpuRun
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


def load_paper_tables() -> dict[str, Any]:
    """The paper's Tables 1–5 (``table1`` … ``table5``) from the package's reference YAML."""
    resource = resources.files("farnet.report").joinpath(PAPER_TABLES_RESOURCE)
    tables = yaml.safe_load(resource.read_text(encoding="utf-8"))
    missing = [f"table{i}" for i in range(1, 6) if f"table{i}" not in tables]
    if missing:
        raise DataError(str(resource), f"missing sections {missing}")
    return tables


def table3_runs(results: Results, paper_table: Mapping[str, Any]) -> TableRuns:
    """The run of Table 3: the paper's FARNet on its dataset with seed 0 (one row, ``"FARNet"``)."""
    return results.select({"FARNet": table3_settings(paper_table)})


def table3_settings(paper_table: Mapping[str, Any]) -> dict[str, Any]:
    """What Table 3's run must be: the paper's FARNet on the table's dataset with seed 0."""
    return {"dataset": paper_table["dataset"], **FARNET, "seed": 0}


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


def check_gpu_run(gpu: GpuRun, paper_table: Mapping[str, Any]) -> None:
    """Raise :class:`~farnet.core.errors.DataError` naming ``run.json`` unless the GPU run is Table 3's run: the
    paper's FARNet on its dataset with seed 0 (what :func:`table3_runs` selects)."""
    expected = table3_settings(paper_table)
    differ = {key: gpu.run.get(key) for key, value in expected.items() if gpu.run.get(key) != value}
    if differ:
        raise DataError(gpu.folder / "run.json", f"run {gpu.run.get('run')!r} is not Table 3's run "
                                                 f"({expected}): it has {differ}")
