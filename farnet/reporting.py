"""The paper's Tables 1-5, the extra tables beyond it, and the plots, from the per-run results.

Every table opens with the provenance of the runs it is built from; the paper's numbers sit only in rows marked
``paper``; each of our numbers is followed by its difference to the paper's. A run that has no results yet is
listed as "not run" rather than left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from farnet import provenance
from farnet.metrics import summarize
from farnet.tables import load_paper_tables, radius_label, split_metrics, table3, write_table

TABLE1_RUNS = {"vgg16": "VGG-16", "vgg19": "VGG-19", "resnet101": "ResNet-101", "resnet152": "ResNet-152",
               "densenet169": "DenseNet-169", "farnet": "DenseNet-121"}
TABLE2_RUNS = {"unet": "UNet", "fpn": "FPN", "msfa_add": "MSFA(+)", "msfa": "MSFA", "msfa_fr_naive": "MSFA+FR*",
               "msfa_fr": "MSFA+FR", "msfa_fr_aw": "MSFA+FR+AW", "farnet": "MSFA+FR+EWC"}
HAND_RUNS = ("hand_fold1", "hand_fold2", "hand_fold3")
SPINE_RUNS = tuple(f"spine_fold{k}" for k in range(1, 6))
SEED_RUNS = ("farnet_seed1", "farnet_seed2", "farnet_seed3")


class Results:
    """Read access to ``results/`` (metrics, run info, predictions, per-landmark tables) by run name."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def has(self, run: str) -> bool:
        return (self.root / "metrics" / f"{run}.json").is_file() and (self.root / "runs" / f"{run}.json").is_file()

    def metrics(self, run: str) -> dict:
        return json.loads((self.root / "metrics" / f"{run}.json").read_text())

    def info(self, run: str) -> dict:
        return json.loads((self.root / "runs" / f"{run}.json").read_text())

    def predictions(self, run: str) -> pd.DataFrame:
        return pd.read_csv(self.root / "predictions" / f"{run}.csv", dtype={"image_id": str})


def runs_header(results: Results, runs: Sequence[str]) -> str:
    """The provenance block of the first available run, then one line per run with what differs between rows."""
    present = [r for r in runs if results.has(r)]
    if not present:
        return "> **No run of this table has results yet.**\n"
    header = provenance.provenance_header(results.info(present[0]))
    rows = []
    for run in runs:
        if not results.has(run):
            rows.append(f"| {run} | not run | | | | | |")
            continue
        i = results.info(run)
        hw = i.get("input_hw") or ["?", "?"]
        rows.append(f"| {run} | {i['profile']} | {hw[0]}×{hw[1]} | {i.get('n_train_images', '?')} | {i['epochs']} | "
                    f"{i['steps']} | {i['train_wall_s']} |")
    table = "\n".join(["| run | profile | input (H×W) | train images | epochs | steps | train s |",
                       "|---|---|---|---|---|---|---|", *rows])
    return (header + "\nRuns in this table (the header above describes the first; rows may differ):\n\n" + table
            + "\n" + _settings_warning(results, present))


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


def _three_rows(method: str, paper: dict, ours: dict | None, radii: Sequence[str]) -> list[dict]:
    """The paper's row, ours and ours − paper for one method (Tables 1 and 2)."""
    theirs = split_metrics(paper, radii, where=f"paper {method}")
    rows = [{"Method": method, "Source": "paper", **theirs}]
    if ours is None:
        rows.append({"Method": method, "Source": "ours: not run", **{k: np.nan for k in theirs}})
        return rows
    mine = split_metrics(ours, radii, where=f"ours {method}")
    rows.append({"Method": method, "Source": "ours", **mine})
    rows.append({"Method": method, "Source": "ours − paper", **{k: mine[k] - theirs[k] for k in theirs}})
    return rows


def _test1_table(results: Results, paper_table: dict, runs: dict[str, str]) -> pd.DataFrame:
    """Tables 1 and 2: for each method, the paper's Test1 row, ours and the difference."""
    by_name = {row["method"]: row for row in paper_table["rows"]}
    rows = []
    for run, method in runs.items():
        ours = results.metrics(run).get("test1") if results.has(run) else None
        rows.extend(_three_rows(method, by_name[method], ours, paper_table["radii_mm"]))
    return pd.DataFrame(rows)


def make_tables(results_dir: Path, raw_root: Path) -> list[Path]:
    """Write ``results/tables/table{1..5}.{md,csv}`` and the extra tables; returns the paths written."""
    results = Results(results_dir)
    paper = load_paper_tables()
    out = results.root / "tables"
    written: list[Path] = []
    if results.has("farnet"):
        written += write_table(table3(results.metrics("farnet"), results.info("farnet"), paper), out / "table3.md",
                               out / "table3.csv", runs_header(results, ["farnet"]),
                               title="Table 3: FARNet vs prior methods on the ISBI 2015 cephalometric dataset")
    written += write_table(_test1_table(results, paper["table1"], TABLE1_RUNS), out / "table1.md",
                           out / "table1.csv", runs_header(results, list(TABLE1_RUNS)),
                           title="Table 1: backbones on ISBI 2015 Test1 (MRE in mm, SDR in %)")
    written += write_table(_test1_table(results, paper["table2"], TABLE2_RUNS), out / "table2.md",
                           out / "table2.csv", runs_header(results, list(TABLE2_RUNS)),
                           title="Table 2: ablations on ISBI 2015 Test1 (MRE in mm, SDR in %)")
    written += write_table(table4(results, paper["table4"]), out / "table4.md", out / "table4.csv",
                           runs_header(results, HAND_RUNS) + _hand_note(results),
                           title="Table 4: hand X-rays, 3-fold cross-validation (MRE ± SD in mm, SDR in %)")
    written += write_table(table5(results, paper["table5"]), out / "table5.md", out / "table5.csv",
                           runs_header(results, SPINE_RUNS),
                           title="Table 5: spinal AP X-rays (MSE in fractions of the image, Pearson ρ)",
                           decimals=4)
    written += extra_tables(results, raw_root, out)
    return written


def _hand_note(results: Results) -> str:
    for run in HAND_RUNS:
        if results.has(run):
            info = results.info(run)
            present, listed = info.get("images_present"), info.get("images_listed")
            if present is not None and listed is not None and present < listed:
                return (f"\n**Only {present} of the {listed} hand images exist here. Our row pools the test images "
                        f"of the folds that ran (column `images`); it is not a replication of Table 4.**\n")
    return ""


def table4(results: Results, paper_table: dict) -> pd.DataFrame:
    """Hand: the paper's rows, then ours pooled over the three folds' test images (each image tested once)."""
    radii = paper_table["radii_mm"]
    rows = []
    for row in paper_table["rows"]:
        rows.append({"Method": row["method"], "Source": "paper", "MRE": row["mre_mm"], "SD": row["sd_mm"],
                     **{radius_label(r): row["sdr"][r] for r in radii}, "images": np.nan})
    frames = [results.predictions(r) for r in HAND_RUNS if results.has(r)]
    if not frames:
        rows.append({"Method": "FARNet (ours)", "Source": "ours: not run"})
        return pd.DataFrame(rows)
    preds = pd.concat(frames)
    argmax = preds[preds["decode"] == "argmax"]
    k = argmax["landmark"].nunique()
    errors = argmax["error_mm"].to_numpy().reshape(-1, k)
    summary = summarize(errors, [float(r) for r in radii])
    ours = {"MRE": summary["mre_mm"], "SD": summary["sd_mm"],
            **{radius_label(r): summary["sdr"][f"{float(r):.1f}"] for r in radii}}
    paper_farnet = next(r for r in rows if r["Method"].startswith("FARNet"))
    profile = results.info(next(r for r in HAND_RUNS if results.has(r)))["profile"]
    rows.append({"Method": f"FARNet (ours, {profile})", "Source": "ours", **ours, "images": errors.shape[0]})
    rows.append({"Method": "ours − paper FARNet", "Source": "ours − paper",
                 **{key: ours[key] - paper_farnet[key] for key in ours}, "images": np.nan})
    return pd.DataFrame(rows)


def table5(results: Results, paper_table: dict) -> pd.DataFrame:
    """Spine: the paper's rows, then ours on the 50 held-out test images (mean ± SD over the 5 fold models),
    on each fold's validation images, and on the 128 further AASCE images, with Cobb-angle SMAPE."""
    rows = [{"Method": r["method"], "Source": "paper", "Split": "test (50)", "MSE": r["mse"], "ρ": r["rho"]}
            for r in paper_table["rows"]]
    present = [r for r in SPINE_RUNS if results.has(r)]
    if not present:
        rows.append({"Method": "FARNet (ours)", "Source": "ours: not run"})
        return pd.DataFrame(rows)
    profile = results.info(present[0])["profile"]
    paper_farnet = next(r for r in paper_table["rows"] if r.get("farnet"))
    for split, label in (("test", "test (50)"), ("fold_val", "fold validation"), ("aasce_test", "AASCE test (128)")):
        per_fold = []
        for run in present:
            m = results.metrics(run)
            key = f"fold{run[-1]}_val" if split == "fold_val" else split
            per_fold.append(m[key])
        mse = np.array([m["mse"] for m in per_fold])
        rho = np.array([m["rho"] for m in per_fold])
        smape = np.array([m.get("cobb_smape", np.nan) for m in per_fold])
        row = {"Method": f"FARNet (ours, {profile}, {len(present)} folds)", "Source": "ours", "Split": label,
               "MSE": mse.mean(), "MSE SD (folds)": mse.std(ddof=1) if len(mse) > 1 else np.nan,
               "ρ": rho.mean(), "ρ SD (folds)": rho.std(ddof=1) if len(rho) > 1 else np.nan,
               "Cobb SMAPE % (beyond the paper)": np.nanmean(smape) if np.isfinite(smape).any() else np.nan}
        rows.append(row)
        if split == "test":
            rows.append({"Method": "ours − paper FARNet", "Source": "ours − paper", "Split": label,
                         "MSE": row["MSE"] - paper_farnet["mse"], "ρ": row["ρ"] - paper_farnet["rho"]})
    return pd.DataFrame(rows)


def extra_tables(results: Results, raw_root: Path, out: Path) -> list[Path]:
    """Beyond the paper: inter-observer error, sub-pixel vs argmax decoding, seed replicates, per landmark."""
    written = []
    radii = ["2.0", "2.5", "3.0", "4.0"]
    observer = inter_observer(raw_root / "isbi2015", [float(r) for r in radii])
    if observer is not None:
        rows = [{"Reference": "senior vs junior doctor (human)", "Split": s, **split_metrics(m, radii)}
                for s, m in observer.items()]
        if results.has("farnet"):
            for s in ("test1", "test2"):
                rows.append({"Reference": "FARNet (ours) vs mean of both", "Split": s,
                             **split_metrics(results.metrics("farnet")[s], radii)})
        header = runs_header(results, ["farnet"]) if results.has("farnet") else ""
        written += write_table(pd.DataFrame(rows), out / "inter_observer.md", out / "inter_observer.csv", header,
                               title="Inter-observer error on ISBI 2015 (the human reference; MRE in mm, SDR in %)")
    isbi_runs = [r for r in [*TABLE1_RUNS, *TABLE2_RUNS, *SEED_RUNS] if results.has(r)]
    isbi_runs = list(dict.fromkeys(isbi_runs))
    if isbi_runs:
        rows = []
        for run in isbi_runs:
            m = results.metrics(run)
            for s in ("test1", "test2"):
                a, b = split_metrics(m[s], radii), split_metrics(m[f"{s}_subpixel"], radii)
                rows.append({"Run": run, "Split": s, "MRE argmax": a["MRE"], "MRE sub-pixel": b["MRE"],
                             "Δ MRE": b["MRE"] - a["MRE"], "2mm argmax": a["2mm"], "2mm sub-pixel": b["2mm"]})
        written += write_table(pd.DataFrame(rows), out / "decoding.md", out / "decoding.csv",
                               runs_header(results, isbi_runs),
                               title="Sub-pixel decoding vs argmax (beyond the paper; MRE in mm, SDR in %)")
    seeds = [r for r in SEED_RUNS if results.has(r)]
    if seeds:
        rows = []
        for s in ("test1", "test2"):
            values = pd.DataFrame([split_metrics(results.metrics(r)[s], radii) for r in seeds])
            rows.append({"Split": s, "runs": len(seeds), **{f"{c} mean": values[c].mean() for c in values},
                         **{f"{c} SD": values[c].std(ddof=1) if len(seeds) > 1 else np.nan for c in values}})
        written += write_table(pd.DataFrame(rows), out / "seeds.md", out / "seeds.csv", runs_header(results, seeds),
                               title="Seed replicates of FARNet (mean ± SD over seeds; MRE in mm, SDR in %)")
    if results.has("farnet"):
        per_lm = pd.read_csv(results.root / "per_landmark" / "farnet.csv")
        per_lm = per_lm[per_lm["decode"] == "argmax"]
        wide = per_lm.pivot_table(index=["landmark", "name"], columns="split", values=["mre_mm", "sd_mm"])
        wide.columns = [f"{split} {'MRE' if v == 'mre_mm' else 'SD'}" for v, split in wide.columns]
        wide = wide.reset_index()
        wide["landmark"] += 1
        written += write_table(wide, out / "per_landmark.md", out / "per_landmark.csv", runs_header(results, ["farnet"]),
                               title="Per-landmark error of FARNet on ISBI 2015 (mm)")
    return written


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


def make_plots(alpha: float, results_dir: Path, prepared_root: Path, n_overlays: int = 4) -> list[Path]:
    """SDR curves, per-landmark MRE, Fig. 5-style overlays for each dataset, the EWC curve (Fig. 4), training
    curves and ours-vs-paper bars; returns the paths written."""
    from farnet import plots
    from farnet.data.views import load_split

    results = Results(results_dir)
    out = results.root / "plots"
    written = [plots.plot_ewc_weight(alpha, out / "ewc_weight.png")]
    paper = load_paper_tables()
    if results.has("farnet"):
        info = results.info("farnet")
        label = provenance.run_label(info)
        argmax = results.predictions("farnet").query("decode == 'argmax'")
        written.append(plots.plot_sdr_curve({s: g["error_mm"].to_numpy() for s, g in argmax.groupby("split")},
                                            out / "isbi2015_sdr_curve.png", label=label))
        per_lm = pd.read_csv(results.root / "per_landmark" / "farnet.csv")
        written.append(plots.plot_per_landmark_mre(per_lm[per_lm["decode"] == "argmax"],
                                                   out / "isbi2015_per_landmark_mre.png", label=label))
        train_log = results.root / "train" / "farnet"
        if train_log.is_dir():
            written.append(plots.plot_training_curves(train_log, out / "training_curves.png", label=label))
        frames = table3(results.metrics("farnet"), info, paper)
        written.append(plots.plot_ours_vs_paper(frames["ours_vs_paper"], out / "table3_ours_vs_paper.png",
                                                label=label, title="Table 3: ours vs paper (FARNet row)"))
    for name, runs in (("table1", TABLE1_RUNS), ("table2", TABLE2_RUNS)):
        df = _test1_table(results, paper[name], runs)
        bars = _bars(df)
        if bars is not None:
            first = next(r for r in runs if results.has(r))
            written.append(plots.plot_ours_vs_paper(bars, out / f"{name}_ours_vs_paper.png",
                                                    label=provenance.run_label(results.info(first)),
                                                    title=f"{name.capitalize()}: Test1 MRE and SDR@2mm, ours vs paper"))
    for dataset, runs in (("isbi2015", ["farnet"]), ("hand_dha", HAND_RUNS), ("spine_boostnet", SPINE_RUNS)):
        run = next((r for r in runs if results.has(r)), None)
        if run is not None and (prepared_root / dataset).is_dir():
            written.append(_overlays(results, run, dataset, prepared_root, out / f"{dataset}_overlays.png",
                                     n_overlays, plots, load_split))
    return written


def _bars(df: pd.DataFrame) -> pd.DataFrame | None:
    """Ours-vs-paper rows (Metric, Unit, Paper, Ours, Difference) of MRE and SDR@2mm per method."""
    rows = []
    for method, group in df.groupby("Method", sort=False):
        by = group.set_index("Source")
        if "ours" not in by.index:
            continue
        for metric, unit in (("MRE", "mm"), ("2mm", "%")):
            rows.append({"Metric": f"{method} {metric}", "Unit": unit, "Paper": by.loc["paper", metric],
                         "Ours": by.loc["ours", metric], "Difference": by.loc["ours", metric] - by.loc["paper", metric]})
    return pd.DataFrame(rows) if rows else None


def _overlays(results: Results, run: str, dataset: str, prepared_root: Path, path: Path, n: int, plots, load_split):
    """Fig. 5 style: the first images of the run's evaluation splits, prediction (red) vs ground truth (blue)."""
    preds = results.predictions(run).query("decode == 'argmax'")
    info = results.info(run)
    images, pred_xy, true_xy, titles = [], [], [], []
    splits = list(dict.fromkeys(preds["split"]))
    per_split = max(1, n // len(splits))
    for split in splits:
        view = load_split(prepared_root / dataset, split)
        rows = preds[preds["split"] == split]
        for i, image_id in enumerate(view.ids[:per_split]):
            one = rows[rows["image_id"] == str(image_id)].sort_values("landmark")
            ax, ay = view.input_to_original[i]
            to_input = lambda x, y: np.stack([(x + 0.5) / ax - 0.5, (y + 0.5) / ay - 0.5], axis=-1)  # noqa: E731
            images.append(np.asarray(view.images[i]))
            pred_xy.append(to_input(one["x_pred"].to_numpy(), one["y_pred"].to_numpy()))
            true_xy.append(to_input(one["x_true"].to_numpy(), one["y_true"].to_numpy()))
            error = one["error_mm"].mean()
            titles.append(f"{split} {image_id}: " + (f"MRE {error:.2f} mm" if np.isfinite(error)
                                                      else f"{one['error_px'].mean():.1f} px"))
    return plots.plot_overlays(images, pred_xy, true_xy, titles, path, label=provenance.run_label(info),
                               numbers=len(pred_xy[0]) <= 40)
