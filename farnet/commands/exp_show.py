"""``farnet exp-show``: the experiments side by side, with the headline numbers only.

    farnet exp-show [--all-params] [--json FILE]

``dvc exp show`` lists every metric of every run (each run's per-split metrics: hundreds of columns), so the
numbers that matter are lost. This reads ``dvc exp show --json`` and prints one row per experiment with the
headline numbers of ``results/summary.json`` (FARNet's Test1 and Test2 MRE with their 95 % intervals over the
images and SDR@2mm, the hand MRE, the spine MSE and ρ) and only the parameters whose values differ between the
experiments shown, as a Markdown table (tabulate) that fits a terminal.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from farnet.core.errors import ConfigError

SUMMARY = "results/summary.json"
#: headline column → the summary keys it shows (a value, or a value with its interval's ends)
HEADLINE = {
    "Test1 MRE [95% CI]": ("farnet_test1_mre_mm", "farnet_test1_mre_mm_low", "farnet_test1_mre_mm_high"),
    "Test1 SDR@2mm": ("farnet_test1_sdr_2mm",),
    "Test2 MRE [95% CI]": ("farnet_test2_mre_mm", "farnet_test2_mre_mm_low", "farnet_test2_mre_mm_high"),
    "Test2 SDR@2mm": ("farnet_test2_sdr_2mm",),
    "hand MRE": ("hand_mre_mm",),
    "spine MSE": ("spine_test_mse",),
    "spine ρ": ("spine_test_rho",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="read this `dvc exp show --json` output instead of running it")
    parser.add_argument("--all-params", action="store_true", help="every parameter, not only those that differ")


def run(args: argparse.Namespace) -> int:
    if args.json is not None:
        document = json.loads(args.json.read_text())
    else:
        done = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"`dvc exp show --json` failed: {done.stderr.strip() or done.stdout.strip()}")
        document = json.loads(done.stdout)
    rows = experiment_rows(document)
    print(render(rows, columns(rows, all_params=args.all_params)))
    return 0


def experiment_rows(document: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per baseline and experiment of ``dvc exp show --json``: its name, its flattened parameters
    (``params.<key>``) and its summary's headline values (``summary.<key>``)."""
    rows = []
    for entry in document:
        rows.append(_row(entry.get("name") or _short(entry["rev"]), entry.get("data") or {}))
        for experiment in entry.get("experiments") or []:
            for rev in experiment.get("revs", []):
                rows.append(_row(f"└ {rev.get('name') or _short(rev['rev'])}", rev.get("data") or {}))
    return rows


def _row(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"Experiment": name}
    for source in (data.get("params") or {}).values():
        row.update({f"params.{k}": v for k, v in _flatten(source.get("data") or {}).items()})
    summary = ((data.get("metrics") or {}).get(SUMMARY) or {}).get("data") or {}
    row.update({f"summary.{k}": v for k, v in _flatten(summary).items()})
    return row


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(rev: str) -> str:
    return rev[:7]


def columns(rows: Sequence[Mapping[str, Any]], all_params: bool = False) -> list[str]:
    """The columns shown: the experiment, each headline any row has, and the parameters that differ between
    the rows (every parameter with ``all_params``)."""
    shown = ["Experiment"]
    shown += [label for label, keys in HEADLINE.items() if any(f"summary.{keys[0]}" in row for row in rows)]
    params = list(dict.fromkeys(key for row in rows for key in row if key.startswith("params.")))
    shown += [key for key in params
              if all_params or len({json.dumps(row.get(key), sort_keys=True) for row in rows}) > 1]
    return shown


def render(rows: Sequence[Mapping[str, Any]], shown: Sequence[str]) -> str:
    """A Markdown table of ``rows`` under ``shown`` (parameters without their ``params.`` prefix)."""
    from tabulate import tabulate

    table = [[_cell(row, column) for column in shown] for row in rows]
    headers = [column.removeprefix("params.") for column in shown]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def _cell(row: Mapping[str, Any], column: str) -> str:
    if column in HEADLINE:
        keys = HEADLINE[column]
        value = row.get(f"summary.{keys[0]}")
        if not _number(value):
            return "-"
        decimals = 4 if column.startswith("spine") else 2
        text = f"{value:.{decimals}f}"
        if len(keys) == 3 and _number(row.get(f"summary.{keys[1]}")) and _number(row.get(f"summary.{keys[2]}")):
            text += f" [{row[f'summary.{keys[1]}']:.2f}–{row[f'summary.{keys[2]}']:.2f}]"
        return text
    value = row.get(column)
    return "-" if value is None else str(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
