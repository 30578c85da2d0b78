"""``farnet settle``: short settling runs that measure what one choice of a run's recipe does.

    farnet settle [--plan pipelines/settling.yaml] [--only NAME ...] [--work settling] [--out results/settling]

A plan (YAML) names a profile, one of its runs, overrides shared by every settling run and one entry per settling
run with its own overrides (``heatmap: {sigma_px: 6.0}``). Each is that run with the shared and its own
overrides merged over the profile's entry for it, trained into ``<work>/<name>/`` (the dataset is fetched and
prepared at the profile's size into ``<work>/`` once) and written to
``<out>/<name>.json`` (its overrides, train info, monitor curve, the argmax floor of its input size, the CPU kind,
the commit), then ``<out>/settling.md`` tabulates them all. The shared overrides limit the training images
(``data.train_limit``) so that the monitor measures each run on the training images it never saw
(``heldout/…``): choices are made on those, never on a test split; Test1 and Test2 are shown beside them.
A finished run is not trained again; an interrupted one resumes (the train stage's checkpoints).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from farnet.config import Params, params_from_dict
from farnet.config.profiles import merge
from farnet.config.yaml_file import read_params_file
from farnet.core import provenance
from farnet.core.errors import ConfigError
from farnet.core.fileio import read_json_object, write_json, write_text

PLAN = Path("pipelines/settling.yaml")
SPLITS = ("heldout", "test1", "test2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", type=Path, default=PLAN, help=f"the settling plan (default {PLAN})")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    parser.add_argument("--work", type=Path, default=Path("settling"),
                        help="the dataset prepared at the plan's size, models and checkpoints (default settling)")
    parser.add_argument("--out", type=Path, default=Path("results/settling"), help="results (default results/settling)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these settling runs only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--floor-only", action="store_true",
                        help="print the argmax floor of each settling run's input size and train nothing")


def run(args: argparse.Namespace) -> int:
    from farnet.stages.train import train_run  # torch: only when something trains

    plan = read_params_file(args.plan)
    raw = read_params_file(args.params)
    names = list(plan_runs(plan, args.plan))
    for name in args.only or []:
        if name not in names:
            raise ConfigError(f"{args.plan}: no settling run {name!r} (have: {', '.join(names)})")
    prepared = args.work / "prepared"
    if args.floor_only:
        for name in args.only or names:
            params = settling_params(raw, plan, name, args.plan)
            prepare_once(params, args.work)
            print(f"argmax floor of {name} ({params.input_hw[0]}x{params.input_hw[1]}): "
                  f"{json.dumps(argmax_floor(params, prepared))}")
        return 0
    for name in args.only or names:
        out = args.out / f"{name}.json"
        if out.is_file():
            print(f"settle {name}: done ({out})")
            continue
        params = settling_params(raw, plan, name, args.plan)
        prepare_once(params, args.work)
        started = time.perf_counter()
        info = train_run(params, prepared, args.work / name, None, progress=not args.no_progress)
        floor = argmax_floor(params, prepared)
        write_json(out, {"name": name, "overrides": merge(plan.get("common") or {}, plan["runs"][name] or {}, name),
                         "profile": plan["profile"], "run": plan["run"], "train_info": info,
                         "argmax_floor": floor, "cpu": provenance.cpu_kind(),
                         "wall_s": round(time.perf_counter() - started, 1),
                         "git_commit": provenance.code_commit()})
        print(f"settle {name}: {info['steps']} steps in {info['train_wall_s']} s -> {out}")
    table = settling_table([read_json_object(p) for p in sorted(args.out.glob("*.json"))
                            if p.stem in names])
    write_text(args.out / "settling.md", table)
    print(table)
    return 0


def plan_runs(plan: dict[str, Any], where: Path) -> dict[str, dict]:
    """The plan's settling runs, checked for shape (their values are checked when each is resolved)."""
    for key in ("profile", "run", "runs"):
        if key not in plan:
            raise ConfigError(f"{where}: missing key {key!r}")
    if not isinstance(plan["runs"], dict) or not plan["runs"]:
        raise ConfigError(f"{where}: runs: expected a mapping of settling run name to overrides")
    return plan["runs"]


def prepare_once(params: Params, work: Path) -> None:
    """Fetch and prepare the run's dataset at its profile's size into ``work/raw`` and ``work/prepared``, unless
    a previous settling run did (a run's own ``data.input_hw`` is resized from that cache when it is read)."""
    from farnet.data.views import DATASET_INFO
    from farnet.stages.fetch import fetch
    from farnet.stages.prepare import prepare

    dataset = params.data.dataset
    if (work / "prepared" / dataset / DATASET_INFO).is_file():
        return
    fetch(params, dataset, work / "raw")
    prepare(params, dataset, work / "raw", work / "prepared")


def settling_params(raw: dict[str, Any], plan: dict[str, Any], name: str, where: Path) -> Params:
    """The plan's run under its profile with the shared overrides and ``name``'s own merged over its entry."""
    raw = copy.deepcopy(raw)
    profile, run = plan["profile"], plan["run"]
    raw["profile"] = profile
    profiles = raw.setdefault("profiles", {})
    if profile not in profiles:
        raise ConfigError(f"{where}: profile {profile!r} is not defined in the params file")
    entry = profiles[profile].setdefault("runs", {}).get(run, {})
    entry = merge(entry, plan.get("common") or {}, f"{where}: common")
    entry = merge(entry, plan["runs"][name] or {}, f"{where}: runs.{name}")
    profiles[profile]["runs"][run] = entry
    try:
        return params_from_dict(raw, run)
    except ConfigError as exc:
        raise ConfigError(f"{where}: runs.{name}: {exc}") from None


def argmax_floor(params: Params, prepared: Path) -> dict[str, float]:
    """The error of perfect heatmaps decoded by argmax at the run's input size, per evaluation split: each
    landmark moved to its nearest input pixel and mapped back to the original image. MRE in mm (``<split>``);
    for the spine, whose unit is a fraction of the image, Table 5's fractional MSE (``<split> mse``); else the
    MRE in original pixels (``<split> px``)."""
    from farnet.core.coords import rescale_points
    from farnet.data.registry import get_dataset
    from farnet.data.views import load_split
    from farnet.evaluation.spine_metrics import fractional_mse

    spec = get_dataset(params.data.dataset)
    floor = {}
    for split in spec.eval_splits(params.data.fold):
        view = load_split(prepared / params.data.dataset, split, params.input_hw)
        snapped = rescale_points(np.rint(view.landmarks).astype(np.float64), view.input_to_original[:, None, :])
        error_px = np.linalg.norm(snapped - view.landmarks_original, axis=-1)
        if spec.unit == "fraction":
            floor[f"{split} mse"] = fractional_mse(snapped, view.landmarks_original, view.original_wh)
        elif spec.unit == "mm":
            floor[split] = float(np.mean(error_px * view.spacing_mm[:, None]))
        else:
            floor[f"{split} px"] = float(np.mean(error_px))
    return floor


def settling_table(records: list[dict[str, Any]]) -> str:
    """Markdown: each settling run's final MRE and beyond-10-mm rate on the held-out images, Test1 and Test2,
    its steps, seconds per step and the argmax floor, with the CPU kind and commit of each."""
    rows = []
    for r in records:
        info = r["train_info"]
        last = info["monitor"][-1] if info["monitor"] else {}
        row = {"settling run": r["name"], "changes": _changes(r["overrides"]), "steps": info["steps"],
               "s/step": round(info["train_wall_s"] / max(info["steps"], 1), 2)}
        for split in SPLITS:
            row[f"{split} MRE"] = last.get(f"{split}/mre_mm", np.nan)
            row[f"{split} >10mm %"] = last.get(f"{split}/outliers_pct", np.nan)
        row["argmax floor Test1"] = r["argmax_floor"].get("test1", np.nan)
        row["CPU"] = r["cpu"]
        row["commit"] = r["git_commit"][:7]
        rows.append(row)
    frame = pd.DataFrame(rows)
    head = ("# Settling runs\n\nEach is the plan's run with the changes shown, trained from random weights; MREs "
            "(mm, argmax) after its last step. Choices are made on `heldout` (training images the runs never see); "
            "Test1 and Test2 are shown, not chosen by.\n\n**REDUCED RUNS — not a replication of the paper's "
            "protocol:** " + ", ".join(sorted({f"profile {r['profile']}" for r in records})) + ", data as the "
            "profile fetches it (the mirror where FARNET_DATA_MIRROR names one), no ImageNet weights, a few hundred "
            "steps each.\n\n")
    return head + (frame.to_markdown(index=False, floatfmt=".2f") if rows else "(none yet)") + "\n"


def _changes(overrides: dict[str, Any], prefix: str = "") -> str:
    items = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            items.append(_changes(value, f"{prefix}{key}."))
        else:
            items.append(f"{prefix}{key}={value}")
    return ", ".join(i for i in items if i)
