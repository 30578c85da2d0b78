"""The provenance block above each table: how its runs were made, and warnings when they cannot be compared.

:func:`runs_header` opens with the provenance of the table's first run (:func:`farnet.core.provenance.
provenance_header`), lists every row's run with what may differ between rows, and warns when the rows were
trained differently or one row matched several runs (a reduced profile must never pass for a replication,
docs/design.md §5). :func:`gpu_header` does the same for Table 3's GPU row, and :func:`hand_sample_note` warns
when Table 4 was made from a sample of the hand images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from farnet.core.fileio import device_slug
from farnet.core.provenance import provenance_header
from farnet.report.gpu import GpuRun
from farnet.report.results import COMPARABLE_KEYS, Results, TableRuns



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


def _settings_warning(results: Results, runs: Sequence[str]) -> str:
    """A warning when the runs of one table were trained with different settings (a reduced profile may give
    one row more images or a larger input than the others)."""
    differ = [key for key in COMPARABLE_KEYS
              if len({json.dumps(results.info(r).get(key)) for r in runs}) > 1]
    if not differ:
        return ""
    return (f"\n**These rows were not trained alike ({', '.join(differ)} differ; see the list above): a difference "
            "between them is not the effect of the method alone.**\n")


def _duplicates_warning(runs: TableRuns) -> str:
    return "".join(f"\n**{len(found)} runs match row {label} ({', '.join(found)}): the row shows {found[0]}, "
                   "the first by name.**\n" for label, found in runs.duplicates.items())


def hand_sample_note(results: Results, runs: TableRuns) -> str:
    """A warning when the hand images are only a sample of the data set (the mirror holds few)."""
    for run in runs.present:
        info = results.info(run)
        present, listed = info.get("images_present"), info.get("images_listed")
        if present is not None and listed is not None and present < listed:
            return (f"\n**Only {present} of the {listed} hand images exist here. Our row pools the test images "
                    f"of the folds that ran (column `images`); it is not a replication of Table 4.**\n")
    return ""


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
    differ = [key for key in COMPARABLE_KEYS if json.dumps(run.get(key)) != json.dumps(cpu_info.get(key))]
    warning = (f"\n**The GPU row was not trained like run {cpu_info.get('run')} ({', '.join(differ)} differ): a "
               "difference between them is not the effect of the hardware alone.**\n" if differ else "")
    return ("\nThe GPU row: `farnet replicate` on a GPU node, imported by `farnet replicate-import` into "
            "`results/gpu/`:\n\n" + block + warning)


def _seconds(measurement: Mapping[str, Any] | None) -> str:
    """A benchmark's median time, or "not measured"."""
    if not measurement or measurement.get("median_s") is None:
        return "not measured"
    return f"{measurement['median_s']:.3f} s"
