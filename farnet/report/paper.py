"""The paper's Tables 1–5: its numbers as printed, and which of our runs fills each of its rows.

The numbers live in ``reference/paper_tables.yaml`` exactly as the paper prints them (:func:`load_paper_tables`).
A table finds its runs by what their run info says they are, never by their names: Table 1 takes one FARNet run
per backbone, Table 2 one run per ablation, Table 3 the paper's FARNet, Tables 4 and 5 one FARNet run per fold,
all with seed 0 (:func:`table1_runs` …). A GPU run imported into ``results/gpu/`` must be Table 3's run too
(:func:`check_gpu_run`).
"""

from __future__ import annotations

from collections import Counter
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

    The FARNet row (MSFA+FR+EWC, the one every row is compared with) is the FARNet run trained like most of the
    other rows (:meth:`~farnet.report.results.Results.trained_like`), seed 0 first, then the lowest seed: under
    the ``study`` profile the seed-0 ``farnet`` run is Table 3's longer cpu row, and Table 2 compares its rows
    with FARNet at their own schedule. With no such run, the seed-0 FARNet run.

    Raises:
        ValueError: the paper's rows and :data:`TABLE2_CONFIGS` name different methods.
    """
    methods = [row["method"] for row in paper_table["rows"]]
    if set(methods) != set(TABLE2_CONFIGS):
        raise ValueError(f"paper table2 rows {methods} differ from TABLE2_CONFIGS {list(TABLE2_CONFIGS)}")
    runs = results.select({method: {"dataset": paper_table["dataset"], **TABLE2_CONFIGS[method], "seed": 0}
                           for method in methods})
    reference = farnet_row(paper_table)
    others = [results.trained_like(run) for method, run in runs.rows.items() if method != reference and run]
    if not others:
        return runs
    alike = Counter(others).most_common(1)[0][0]
    shown = runs.rows[reference]
    if shown is not None and results.trained_like(shown) == alike:
        return runs
    candidates = [run for run in _by_seed(results, results.matching(dataset=paper_table["dataset"], **FARNET))
                  if results.trained_like(run) == alike]
    if not candidates:
        return runs
    return TableRuns({**runs.rows, reference: candidates[0]},
                     {label: found for label, found in runs.duplicates.items() if label != reference})


def farnet_row(paper_table: Mapping[str, Any]) -> str:
    """The label of a table's FARNet row (the paper's row marked ``farnet: true``).

    Raises:
        ValueError: the table marks no row.
    """
    for row in paper_table["rows"]:
        if row.get("farnet"):
            return row["method"]
    raise ValueError("the paper table marks no row `farnet: true`")


def fold_runs(results: Results, paper_table: Mapping[str, Any]) -> TableRuns:
    """Tables 4 and 5: FARNet with seed 0 on each fold of the paper's cross-validation (rows "fold 1", …)."""
    return results.select({f"fold {k}": {"dataset": paper_table["dataset"], **FARNET, "seed": 0, "fold": k}
                           for k in range(1, paper_table["folds"] + 1)})


def seed_runs(results: Results, paper_table: Mapping[str, Any], reference: str | None = None) -> TableRuns:
    """Seed replicates (beyond the paper) of ``reference`` (default: Table 3's run): the paper's FARNet on the
    table's dataset, trained like it (:meth:`~farnet.report.results.Results.trained_like`), with another seed;
    rows ``seed <k>`` in seed order."""
    if reference is None:
        reference = table3_runs(results, paper_table).first
    if reference is None:
        return TableRuns({})
    alike = results.trained_like(reference)
    replicates = [run for run in _by_seed(results, results.matching(dataset=paper_table["dataset"], **FARNET))
                  if run != reference and results.trained_like(run) == alike]
    rows: dict[str, str | None] = {}
    for run in replicates:
        label = f"seed {results.info(run)['seed']}"
        rows[label if label not in rows else f"{label} ({run})"] = run
    return TableRuns(rows)


def row_seeds(results: Results, paper_table: Mapping[str, Any], runs: TableRuns) -> TableRuns:
    """The seed replicates of the run in a table's FARNet row (Table 1's DenseNet-121, Table 2's MSFA+FR+EWC):
    the spread a difference from that row must exceed to be resolved."""
    return seed_runs(results, paper_table, runs.rows.get(farnet_row(paper_table)))


def seed_groups(results: Results, paper_table: Mapping[str, Any]) -> list[list[str]]:
    """FARNet's runs on the table's dataset trained alike, in groups of two or more, each in seed order: the
    seeds table gives each group's mean ± SD (the cpu row and the study's seeds are separate groups)."""
    groups = results.alike_groups(_by_seed(results, results.matching(dataset=paper_table["dataset"], **FARNET)))
    return [runs for runs in groups if len(runs) > 1]


def _by_seed(results: Results, runs: list[str]) -> list[str]:
    return sorted(runs, key=lambda run: (results.info(run)["seed"], run))


def check_gpu_run(gpu: GpuRun, paper_table: Mapping[str, Any]) -> None:
    """Raise :class:`~farnet.core.errors.DataError` naming ``run.json`` unless the GPU run is Table 3's run: the
    paper's FARNet on its dataset with seed 0 (what :func:`table3_runs` selects)."""
    expected = table3_settings(paper_table)
    differ = {key: gpu.run.get(key) for key, value in expected.items() if gpu.run.get(key) != value}
    if differ:
        raise DataError(gpu.folder / "run.json", f"run {gpu.run.get('run')!r} is not Table 3's run "
                                                 f"({expected}): it has {differ}")
