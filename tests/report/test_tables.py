"""Tests of the tables stage (farnet.report.tables) and its pieces: Tables 1-5 (isbi_tables, fold_tables), the extra
tables, their run headers and output (headers, markdown), on hand-made results, and of the paper's reference numbers
in farnet/report/reference/paper_tables.yaml and the runs that fill its rows (paper)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_results import isbi_metrics, per_landmark, predictions, split, write_run

from farnet.core.errors import DataError
from farnet.report.columns import ours_vs_paper, split_metrics
from farnet.report.extra_tables import decoding_table, inter_observer_table, per_landmark_table, seeds_table
from farnet.report.fold_tables import headline_folds, table4, table5
from farnet.report.headers import runs_header
from farnet.report.isbi_tables import methods_table, table3
from farnet.report.markdown import to_markdown, write_table
from farnet.report.paper import (
    fold_runs, load_paper_tables, row_seeds, seed_groups, seed_runs, table1_runs, table2_runs, table3_runs,
)
from farnet.report.results import Results, TableRuns
from farnet.report.tables import make_tables

PAPER_TEXT = Path(__file__).resolve().parents[3] / "shared" / "paper" / "farnet-paper.txt"
RADII = ["2.0", "2.5", "3.0", "4.0"]
METRICS = {
    "test1": split(1.50, [80.0, 85.0, 90.0, 95.0]),
    "test2": split(1.62, [70.0, 78.0, 85.0, 92.5]),
}
RUN = {"profile": "quick", "input_hw": [800, 640], "pretrained": "none", "full_set": True}


@pytest.fixture(scope="module")
def paper():
    return load_paper_tables()


# ---------------------------------------------------------------------------------------------- paper numbers


def test_spot_checks_against_the_paper(paper):
    farnet3 = next(r for r in paper["table3"]["rows"] if r.get("farnet"))
    assert farnet3["test2"]["sdr"]["2.0"] == 77.00
    assert farnet3["test1"]["mre_mm"] == 1.12 and farnet3["test2"]["mre_mm"] == 1.42
    vgg19 = next(r for r in paper["table1"]["rows"] if r["method"] == "VGG-19")
    assert vgg19["mre_mm"] == 1.37
    farnet5 = next(r for r in paper["table5"]["rows"] if r.get("farnet"))
    assert (farnet5["mse"], farnet5["rho"]) == (0.0017, 0.98)
    farnet4 = next(r for r in paper["table4"]["rows"] if r.get("farnet"))
    assert (farnet4["mre_mm"], farnet4["sd_mm"], farnet4["sdr"]["10.0"]) == (0.62, 0.55, 100)
    ibragimov = paper["table3"]["rows"][0]
    assert ibragimov["test2"]["mre_mm"] is None and ibragimov["input_size"] is None
    assert [r["method"] for r in paper["table2"]["rows"]][0] == "UNet"
    assert len(paper["table2"]["rows"]) == 8 and len(paper["table3"]["rows"]) == 8


def _printed(value):
    if value is None:
        return None
    if isinstance(value, list):
        return f"{value[0]} × {value[1]}"
    return float(value)


def _expected_cells(table, row):
    def sdr(values):
        return [_printed(values["sdr"][r]) for r in table["radii_mm"]]

    if "test1" in row:
        return ([_printed(row["input_size"])]
                + [_printed(row["test1"]["mre_mm"])] + sdr(row["test1"])
                + [_printed(row["test2"]["mre_mm"])] + sdr(row["test2"]))
    if "sd_mm" in row:
        return [_printed(row["input_size"]), f"{row['mre_mm']:.2f} ± {row['sd_mm']:.2f}"] + sdr(row)
    if "mse" in row:
        return [_printed(row["mse"]), _printed(row["rho"])]
    return [_printed(row["mre_mm"])] + sdr(row)


def _parse_cell(cell):
    cell = cell.strip()
    if cell == "-":
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason="paper text not available")
def test_every_number_matches_the_paper_text(paper):
    lines = PAPER_TEXT.read_text(encoding="utf-8").splitlines()
    for name in ("table1", "table2", "table3", "table4", "table5"):
        table = paper[name]
        for row in table["rows"]:
            printed = [[_parse_cell(c) for c in line.split("\t")[1:]]
                       for line in lines if line.split("\t")[0] == row["method"]]
            assert _expected_cells(table, row) in printed, (name, row["method"], printed)


# ---------------------------------------------------------------------------------------------- builders


def test_split_metrics_flattens_in_radius_order():
    assert split_metrics(METRICS["test1"], RADII) == {"MRE": 1.5, "2mm": 80.0, "2.5mm": 85.0, "3mm": 90.0,
                                                       "4mm": 95.0}
    with pytest.raises(ValueError, match="no radius '10.0'"):
        split_metrics(METRICS["test1"], ["10.0"])
    with pytest.raises(ValueError, match="needs 'mre_mm' and 'sdr'"):
        split_metrics({"sdr": {}}, RADII)


def test_ours_vs_paper_difference_and_missing_values():
    df = ours_vs_paper({"MRE": 1.5, "2mm": 80.0, "extra": 3.0}, {"MRE": 1.12, "2mm": 88.03, "3mm": None},
                       units={"MRE": "mm"})
    assert list(df.columns) == ["Metric", "Unit", "Paper", "Ours", "Difference"]
    assert list(df["Metric"]) == ["MRE", "2mm", "3mm", "extra"]
    assert df["Difference"].iloc[0] == pytest.approx(0.38)
    assert df["Difference"].iloc[1] == pytest.approx(-8.03)
    assert math.isnan(df["Difference"].iloc[2]) and math.isnan(df["Paper"].iloc[3])
    assert list(df["Unit"]) == ["mm", "", "", ""]


def test_table3_rows_and_columns(paper):
    result = table3(METRICS, RUN, paper)
    main = result["table3"]
    assert list(main.columns) == (["Method", "Input size"]
                                  + [f"Test1 {c}" for c in ("MRE", "2mm", "2.5mm", "3mm", "4mm")]
                                  + [f"Test2 {c}" for c in ("MRE", "2mm", "2.5mm", "3mm", "4mm")] + ["source"])
    assert len(main) == 9
    assert (main["source"].iloc[:8] == "paper").all()
    assert main["Method"].iloc[7] == "FARNet (paper)"
    ours = main.iloc[8]
    assert ours["Method"] == "FARNet (ours, quick)" and ours["source"] == "ours"
    assert ours["Input size"] == "800 × 640"
    assert (ours["Test1 MRE"], ours["Test2 4mm"]) == (1.50, 92.5)
    assert math.isnan(main.loc[main["Method"] == "Qian et al.[44]", "Test1 MRE"].iloc[0])


def test_table3_ours_vs_paper_hand_computed(paper):
    comparison = table3(METRICS, RUN, paper)["ours_vs_paper"].set_index("Metric")
    # paper FARNet: Test1 MRE 1.12, Test2 2mm 77.00, Test2 4mm 95.21
    assert comparison.loc["Test1 MRE", "Paper"] == 1.12
    assert comparison.loc["Test1 MRE", "Difference"] == pytest.approx(1.50 - 1.12)
    assert comparison.loc["Test2 2mm", "Difference"] == pytest.approx(70.0 - 77.0)
    assert comparison.loc["Test2 4mm", "Difference"] == pytest.approx(92.5 - 95.21)
    assert comparison.loc["Test1 MRE", "Unit"] == "mm" and comparison.loc["Test1 2mm", "Unit"] == "%"
    assert len(comparison) == 10


def test_table3_subpixel_row_is_labelled_beyond_the_paper(paper):
    metrics = {**METRICS, "test1_subpixel": split(1.40, [82.0, 86.0, 91.0, 96.0]),
               "test2_subpixel": split(1.55, [72.0, 79.0, 86.0, 93.0])}
    result = table3(metrics, RUN, paper)
    last = result["table3"].iloc[-1]
    assert "sub-pixel" in last["Method"] and last["source"] == "ours, beyond the paper"
    comparison = result["ours_vs_paper"].set_index("Metric")
    assert comparison.loc["Test1 MRE", "Difference (sub-pixel)"] == pytest.approx(1.40 - 1.12)


def test_table3_rejects_incomplete_metrics(paper):
    with pytest.raises(ValueError, match="no split 'test2'"):
        table3({"test1": METRICS["test1"]}, RUN, paper)
    broken = {**METRICS, "test2": {"mre_mm": 1.0, "sdr": {"2.0": 1.0}}}
    with pytest.raises(ValueError, match="no radius '2.5'"):
        table3(broken, RUN, paper)


# ---------------------------------------------------------------------------------------------- output


def test_write_table_markdown_and_csv(tmp_path, paper):
    result = table3(METRICS, RUN, paper)
    md, csv = tmp_path / "tables" / "table3.md", tmp_path / "tables" / "table3.csv"
    written = write_table(result, md, csv, "> provenance here\n", title="Table 3")
    assert written == [md, csv, tmp_path / "tables" / "table3_ours_vs_paper.csv"]
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Table 3\n\n> provenance here")
    assert text.index("provenance here") < text.index("| Method")
    assert "| FARNet (ours, quick)" in text and "77.00" in text and "1.50" in text
    assert "|           - |" in text  # '-' for the paper's missing MRE values
    assert "0.38" in text  # Test1 MRE difference, 2 decimals
    back = pd.read_csv(csv)
    assert list(back["Method"])[-1] == "FARNet (ours, quick)"
    assert back["Test1 MRE"].iloc[-1] == 1.5
    assert pd.read_csv(written[2])["Difference"].iloc[0] == pytest.approx(0.38)
    assert not list(md.parent.glob("*.tmp"))


def test_write_table_single_frame(tmp_path):
    df = pd.DataFrame({"Method": ["a"], "MSE": [0.0017]})
    write_table(df, tmp_path / "t.md", tmp_path / "t.csv", "header", decimals=4)
    assert "0.0017" in (tmp_path / "t.md").read_text()
    assert pd.read_csv(tmp_path / "t.csv")["MSE"].iloc[0] == 0.0017


def test_to_markdown_keeps_integers_and_dashes():
    text = to_markdown(pd.DataFrame({"n": [3], "x": [float("nan")], "y": [1.234]}))
    cells = [cell.strip() for cell in text.splitlines()[2].strip("|").split("|")]
    assert cells == ["3", "-", "1.23"]
    assert text.splitlines()[1] == "|----:|----:|-----:|"  # numbers right-aligned


# ---------------------------------------------------------------------------------------------- run headers


def test_paper_tables_state_rows_by_settings_not_run_names(paper):
    assert [r["backbone"] for r in paper["table1"]["rows"]][-1] == "densenet121"
    assert (paper["table4"]["folds"], paper["table5"]["folds"]) == (3, 5)
    assert not any("id" in row for row in paper["table2"]["rows"])


def test_header_lists_every_run_and_the_rows_not_run(tmp_path):
    write_run(tmp_path, "a", {})
    write_run(tmp_path, "b", {}, train_wall_s=99.0, seed=1)
    header = runs_header(Results(tmp_path), TableRuns({"A": "a", "B": "b", "C": None}))
    assert "| a | quick | 160×128 | 40 | 1 | 40 | 12.5 |" in header
    assert "| b | quick | 160×128 | 40 | 1 | 40 | 99.0 |" in header
    assert "| C | not run |" in header
    assert "not trained alike" not in header  # wall time and seed may differ between comparable rows
    assert header.index("Provenance") < header.index("| a |")


def test_header_of_a_table_without_runs(tmp_path):
    assert runs_header(Results(tmp_path), TableRuns({"A": None})) == "> **No run of this table has results yet.**\n"


@pytest.mark.parametrize("change, named", [
    ({"input_hw": [320, 256]}, "input_hw"),
    ({"full_set": True, "n_train_images": 150}, "full_set"),
    ({"epochs": 3}, "epochs"),
    ({"lr": 1e-4}, "lr"),
])
def test_header_warns_when_rows_were_trained_differently(tmp_path, change, named):
    write_run(tmp_path, "a", {})
    write_run(tmp_path, "b", {}, **change)
    header = runs_header(Results(tmp_path), TableRuns.of(["a", "b"]))
    assert "**These rows were not trained alike" in header
    assert f"({named} differ;" in header


def test_header_warns_when_several_runs_match_one_row(tmp_path, paper):
    write_run(tmp_path, "vgg_b", isbi_metrics(2.0, 2.0), backbone="vgg16")
    write_run(tmp_path, "vgg_a", isbi_metrics(1.0, 1.0), backbone="vgg16")
    results = Results(tmp_path)
    runs = table1_runs(results, paper["table1"])
    assert runs.rows["VGG-16"] == "vgg_a"
    assert ("**2 runs match row VGG-16 (vgg_a, vgg_b): the row shows vgg_a, the first by name.**"
            in runs_header(results, runs))
    ours = methods_table(results, paper["table1"], runs).query("Method == 'VGG-16' and Source == 'ours'")
    assert ours["MRE"].tolist() == [1.0]


# ---------------------------------------------------------------------------------------------- Tables 1 and 2


def _rows(df, method):
    return df[df["Method"] == method].set_index("Source")


def test_table1_one_farnet_run_per_backbone(tmp_path, paper):
    write_run(tmp_path, "first_try", isbi_metrics(1.50, 9.0), backbone="vgg16")
    write_run(tmp_path, "farnet", isbi_metrics(1.20, 9.0))
    write_run(tmp_path, "vgg16_l2", isbi_metrics(5.0, 9.0), backbone="vgg16", loss="l2")  # an ablation
    write_run(tmp_path, "vgg16_seed1", isbi_metrics(5.0, 9.0), backbone="vgg16", seed=1)  # a replicate
    write_run(tmp_path, "vgg16_hand", isbi_metrics(5.0, 9.0), backbone="vgg16", dataset="hand_dha")
    results = Results(tmp_path)
    runs = table1_runs(results, paper["table1"])
    assert runs.rows == {"VGG-16": "first_try", "VGG-19": None, "ResNet-101": None, "ResNet-152": None,
                         "DenseNet-169": None, "DenseNet-121": "farnet"}
    df = methods_table(results, paper["table1"], runs)
    # no predictions here: the interval columns are left out; the paper's rows have their difference from FARNet
    assert list(df.columns) == ["Method", "Source", "MRE", "2mm", "2.5mm", "3mm", "4mm", "Δ MRE vs FARNet"]
    assert _rows(df, "VGG-16").loc["paper", "Δ MRE vs FARNet"] == pytest.approx(1.44 - 1.12)
    vgg16 = _rows(df, "VGG-16")
    assert vgg16.loc["paper", "MRE"] == 1.44 and vgg16.loc["ours", "MRE"] == 1.50
    assert vgg16.loc["ours − paper", "MRE"] == pytest.approx(1.50 - 1.44)
    assert vgg16.loc["ours − paper", "2mm"] == pytest.approx(80.0 - 84.03)
    assert _rows(df, "DenseNet-121").loc["ours − paper", "MRE"] == pytest.approx(1.20 - 1.12)
    vgg19 = _rows(df, "VGG-19")
    assert list(vgg19.index) == ["paper", "ours: not run"] and np.isnan(vgg19.loc["ours: not run", "MRE"])
    assert "| VGG-19 | not run |" in runs_header(results, runs)


def test_table2_rows_by_architecture_fusion_refinement_and_loss(tmp_path, paper):
    write_run(tmp_path, "u", isbi_metrics(1.40, 9.0), architecture="unet", loss="l2", fusion="add")
    write_run(tmp_path, "plus", isbi_metrics(1.30, 9.0), fusion="add", refinement="none", loss="l2")
    write_run(tmp_path, "cat", isbi_metrics(1.25, 9.0), refinement="none", loss="l2")
    write_run(tmp_path, "naive", isbi_metrics(1.22, 9.0), refinement="naive", loss="l2")
    write_run(tmp_path, "aw", isbi_metrics(1.21, 9.0), loss="awing")
    write_run(tmp_path, "ewc", isbi_metrics(1.10, 9.0))
    write_run(tmp_path, "fpn_vgg", isbi_metrics(3.0, 9.0), architecture="fpn", backbone="vgg16", loss="l2")
    results = Results(tmp_path)
    runs = table2_runs(results, paper["table2"])
    assert runs.rows == {"UNet": "u", "FPN": None, "MSFA(+)": "plus", "MSFA": "cat", "MSFA+FR*": "naive",
                         "MSFA+FR": None, "MSFA+FR+AW": "aw", "MSFA+FR+EWC": "ewc"}
    df = methods_table(results, paper["table2"], runs)
    assert list(df["Method"].drop_duplicates()) == [r["method"] for r in paper["table2"]["rows"]]
    assert _rows(df, "UNet").loc["ours − paper", "MRE"] == pytest.approx(1.40 - 1.38)
    assert _rows(df, "MSFA(+)").loc["ours", "MRE"] == 1.30 and _rows(df, "MSFA").loc["ours", "MRE"] == 1.25
    assert _rows(df, "MSFA+FR+EWC").loc["ours − paper", "4mm"] == pytest.approx(95.0 - 98.48)
    assert "ours: not run" in _rows(df, "FPN").index and "ours: not run" in _rows(df, "MSFA+FR").index


def test_table1_reads_only_the_paper_split(tmp_path, paper):
    write_run(tmp_path, "farnet", {"test2": split(1.0, [1.0] * 4)})
    results = Results(tmp_path)
    with pytest.raises(DataError, match=r"metrics/farnet.json: no split 'test1'"):
        methods_table(results, paper["table1"], table1_runs(results, paper["table1"]))


# ---------------------------------------------------------------------------------------------- Tables 4 and 5


HAND_RADII = ["2.0", "4.0", "10.0"]


def _hand_run(root, run, fold, errors):
    metrics = {f"fold{fold}_test": split(1.0, [0.0] * 3, HAND_RADII, n_images=len(errors))}
    preds = pd.concat([predictions({f"fold{fold}_test": errors}),
                       predictions({f"fold{fold}_test": errors}, decode="subpixel").assign(error_mm=0.0)])
    write_run(root, run, metrics, preds=preds, dataset="hand_dha", fold=fold, images_present=9,
              images_listed=895)


def test_table4_pools_the_folds_test_images(tmp_path, paper):
    _hand_run(tmp_path, "hand_a", 1, [[1.0, 3.0]])
    _hand_run(tmp_path, "hand_b", 3, [[2.0, 6.0]])
    write_run(tmp_path, "hand_l2", {}, dataset="hand_dha", fold=2, loss="l2")  # not FARNet: not Table 4
    results = Results(tmp_path)
    runs = fold_runs(results, paper["table4"])
    assert runs.rows == {"fold 1": "hand_a", "fold 2": None, "fold 3": "hand_b"}
    df = table4(results, paper["table4"], runs).set_index("Source")
    assert list(df.index[:6]) == ["paper"] * 6
    ours = df.loc["ours"]  # errors 1, 3, 2, 6 mm over two images (argmax rows only)
    assert ours["Method"] == "FARNet (ours, quick)" and ours["images"] == 2
    assert ours["MRE"] == pytest.approx(3.0) and ours["SD"] == pytest.approx(np.sqrt(14 / 3))
    assert (ours["2mm"], ours["4mm"], ours["10mm"]) == (50.0, 75.0, 100.0)
    difference = df.loc["ours − paper"]
    assert difference["MRE"] == pytest.approx(3.0 - 0.62) and difference["2mm"] == pytest.approx(50.0 - 97.24)
    assert "| fold 2 | not run |" in runs_header(results, runs)


def test_table4_and_5_without_runs(tmp_path, paper):
    results = Results(tmp_path)
    for name, build in (("table4", table4), ("table5", table5)):
        df = build(results, paper[name], fold_runs(results, paper[name]))
        assert df["Source"].iloc[-1] == "ours: not run"
        assert (df["Source"].iloc[:-1] == "paper").all()


def _spine_metrics(fold, mse, rho, smape):
    one = lambda m: {"n_images": 50, "mse": m, "rho": rho, "mre_px": 9.0, "cobb_smape": smape}  # noqa: E731
    return {f"fold{fold}_val": one(mse / 2), "test": one(mse), "aasce_test": one(2 * mse)}


def test_table5_mean_and_sd_over_folds_read_from_run_info(tmp_path, paper):
    # the names end in digits that are not the folds: the fold comes from the run info
    write_run(tmp_path, "spine_run7", _spine_metrics(2, 0.002, 0.90, 10.0), dataset="spine_boostnet", fold=2)
    write_run(tmp_path, "spine_run8", _spine_metrics(4, 0.004, 0.80, 20.0), dataset="spine_boostnet", fold=4)
    results = Results(tmp_path)
    runs = fold_runs(results, paper["table5"])
    assert runs.present == ["spine_run7", "spine_run8"] and runs.rows["fold 1"] is None
    df = table5(results, paper["table5"], runs)
    ours = df[df["Source"] == "ours"].set_index("Split")
    assert list(ours.index) == ["test (50)", "fold validation", "AASCE test (128)"]
    assert ours.loc["test (50)", "Method"] == "FARNet (ours, quick, folds 2, 4)"
    assert ours.loc["test (50)", "MSE"] == pytest.approx(0.003)
    assert ours.loc["test (50)", "MSE SD (folds)"] == pytest.approx(np.std([0.002, 0.004], ddof=1))
    assert ours.loc["test (50)", "ρ"] == pytest.approx(0.85)
    assert ours.loc["fold validation", "MSE"] == pytest.approx(0.0015)
    assert ours.loc["AASCE test (128)", "Cobb SMAPE % (beyond the paper)"] == pytest.approx(15.0)
    difference = df[df["Source"] == "ours − paper"].iloc[0]
    assert difference["MSE"] == pytest.approx(0.003 - 0.0017) and difference["ρ"] == pytest.approx(0.85 - 0.98)


def test_table5_gives_folds_trained_differently_rows_of_their_own(tmp_path, paper):
    """The study's fold 1 (all its images, 2,760 steps) beside quick folds 2 and 4: never one mean over both; the
    headline is the longest-trained group."""
    spine = {"dataset": "spine_boostnet"}
    write_run(tmp_path, "spine_fold1", _spine_metrics(1, 0.001, 0.95, 8.0), fold=1, profile="study", epochs=8,
              steps=2760, **spine)
    write_run(tmp_path, "spine_fold2", _spine_metrics(2, 0.04, 0.5, 60.0), fold=2, **spine)
    write_run(tmp_path, "spine_fold4", _spine_metrics(4, 0.06, 0.4, 70.0), fold=4, **spine)
    results = Results(tmp_path)
    runs = fold_runs(results, paper["table5"])
    ours = table5(results, paper["table5"], runs).query("Source == 'ours' and Split == 'test (50)'").set_index("Method")
    assert ours.loc["FARNet (ours, study, fold 1)", "MSE"] == pytest.approx(0.001)
    assert ours.loc["FARNet (ours, quick, folds 2, 4)", "MSE"] == pytest.approx(0.05)
    assert headline_folds(results, runs) == ["spine_fold1"]
    make_tables(tmp_path, tmp_path / "raw")
    assert json.loads((tmp_path / "summary.json").read_text())["spine_test_mse"] == pytest.approx(0.001)


# ---------------------------------------------------------------------------------------------- extra tables


def test_decoding_table(tmp_path):
    write_run(tmp_path, "farnet", isbi_metrics(1.5, 1.62, subpixel_shift=-0.25))
    df = decoding_table(Results(tmp_path), ["farnet"]).set_index("Split")
    assert df.loc["test1", "MRE argmax"] == 1.5 and df.loc["test1", "MRE sub-pixel"] == 1.25
    assert df.loc["test2", "Δ MRE sub-pixel"] == pytest.approx(-0.25)
    assert df.loc["test1", "2mm argmax"] == 80.0 and list(df["Run"]) == ["farnet", "farnet"]
    assert "MRE guided" not in df  # results made before the guided decoder have no such columns


def test_decoding_table_and_table3_show_the_guided_decoder_and_outliers(tmp_path, paper):
    metrics = isbi_metrics(2.5, 2.0)
    for split in ("test1", "test2"):
        metrics[split]["outliers_pct"] = 3.0
        metrics[f"{split}_guided"] = {**metrics[split], "mre_mm": 1.75, "outliers_pct": 0.5}
    write_run(tmp_path, "farnet", metrics)
    df = decoding_table(Results(tmp_path), ["farnet"]).set_index("Split")
    assert df.loc["test1", "MRE guided"] == 1.75 and df.loc["test1", "Δ MRE guided"] == pytest.approx(-0.75)
    assert (df.loc["test1", ">10mm % argmax"], df.loc["test1", ">10mm % guided"]) == (3.0, 0.5)
    frames = table3(metrics, {"profile": "cpu", "input_hw": [320, 256]}, paper)
    rows = frames["table3"].set_index("Method")
    guided = rows.loc["FARNet (ours, cpu, guided decoding: the fine peak near the coarse peak)"]
    assert guided["Test1 MRE"] == 1.75 and guided["source"] == "ours, beyond the paper"
    assert rows.loc["FARNet (ours, cpu)", "Test1 >10mm %"] == 3.0  # reported for our rows
    assert math.isnan(rows.loc["FARNet (paper)", "Test1 >10mm %"])  # the paper does not report it
    assert "Ours (guided, beyond the paper)" in frames["ours_vs_paper"]


def test_seed_replicates_are_table3_settings_with_another_seed(tmp_path, paper):
    write_run(tmp_path, "farnet", isbi_metrics(1.0, 1.0))
    write_run(tmp_path, "rep_b", isbi_metrics(4.0, 3.0), seed=2)
    write_run(tmp_path, "rep_a", isbi_metrics(2.0, 1.0), seed=1)
    write_run(tmp_path, "vgg_seed1", isbi_metrics(9.0, 9.0), seed=1, backbone="vgg16")
    results = Results(tmp_path)
    runs = seed_runs(results, paper["table3"])
    assert runs.rows == {"seed 1": "rep_a", "seed 2": "rep_b"}
    assert table3_runs(results, paper["table3"]).rows == {"FARNet": "farnet"}
    df = seeds_table(results, [runs.present]).set_index("Split")
    assert df.loc["test1", "runs"] == "rep_a, rep_b"
    assert df.loc["test1", "MRE mean"] == pytest.approx(3.0) and df.loc["test1", "MRE SD"] == pytest.approx(2 ** 0.5)
    assert df.loc["test2", "MRE mean"] == pytest.approx(2.0) and df.loc["test1", "2mm SD"] == 0.0


def test_table2_compares_its_rows_with_farnet_trained_like_them(tmp_path, paper):
    """Under the study profile the seed-0 `farnet` run is Table 3's longer cpu row; Table 2's FARNet row is the
    FARNet run trained like its other rows (seed 1 here), its replicates and the seeds table follow suit."""
    study = {"profile": "study", "epochs": 6}

    def run(name, mre, per_lm=None, **info):  # Test1 errors with the MRE given
        errors = (np.asarray(_noisy_errors(0.0, len(name))) * mre / np.mean(_noisy_errors(0.0, len(name)))).tolist()
        write_run(tmp_path, name, isbi_metrics(mre, mre + 0.2), preds=predictions({"test1": errors, "test2": errors[:100]}),
                  per_lm=per_lm, **info)

    run("farnet", 1.5, profile="cpu", epochs=20,  # Table 3's row
        per_lm=per_landmark({"test1": [1.5], "test2": [1.7]}))
    run("unet", 3.0, architecture="unet", loss="l2", **study)
    run("msfa", 2.5, refinement="none", loss="l2", **study)
    run("farnet_seed2", 2.2, seed=2, **study)
    run("farnet_seed1", 2.0, seed=1, **study)
    run("farnet_seed3", 2.6, seed=3, **{**study, "epochs": 1})  # a quick one
    results = Results(tmp_path)
    t2 = table2_runs(results, paper["table2"])
    assert t2.rows["MSFA+FR+EWC"] == "farnet_seed1" and t2.rows["UNet"] == "unet" and not t2.duplicates
    assert table3_runs(results, paper["table3"]).rows == {"FARNet": "farnet"}
    assert row_seeds(results, paper["table2"], t2).rows == {"seed 2": "farnet_seed2"}
    assert seed_runs(results, paper["table3"]).rows == {}  # nothing else trained like the cpu row
    assert seed_groups(results, paper["table3"]) == [["farnet_seed1", "farnet_seed2"]]
    df = methods_table(results, paper["table2"], t2, row_seeds(results, paper["table2"], t2))
    msfa = _rows(df, "MSFA").loc["ours"]
    assert msfa["Δ MRE vs FARNet"] == pytest.approx(0.5) and msfa["seed SD"] == pytest.approx(np.std([2.0, 2.2], ddof=1))
    make_tables(tmp_path, tmp_path / "raw")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["farnet_test1_mre_mm"] == 1.5 and summary["table2_test1_mre_mm"]["MSFA+FR+EWC"] == 2.0
    seeds = pd.read_csv(tmp_path / "tables" / "seeds.csv")
    assert seeds["runs"].unique().tolist() == ["farnet_seed1, farnet_seed2"]
    assert seeds.loc[seeds["Split"] == "test1", "MRE mean"].tolist() == [pytest.approx(2.1)]
    # without FARNet runs trained like the rows, the seed-0 run stays (the quick and paper profiles)
    for run in ("farnet_seed1", "farnet_seed2"):
        for folder in ("runs", "metrics"):
            (tmp_path / folder / f"{run}.json").unlink()
    assert table2_runs(Results(tmp_path), paper["table2"]).rows["MSFA+FR+EWC"] == "farnet"


def test_per_landmark_table(tmp_path):
    write_run(tmp_path, "farnet", {}, per_lm=per_landmark({"test1": [1.0, 2.0], "test2": [3.0, 4.0]}))
    df = per_landmark_table(Results(tmp_path), "farnet")
    assert list(df.columns) == ["landmark", "name", "test1 MRE", "test2 MRE", "test1 SD", "test2 SD"]
    assert df["landmark"].tolist() == [1, 2]  # numbered from 1
    assert df["test2 MRE"].tolist() == [3.0, 4.0]  # argmax rows, not the sub-pixel ones


def test_inter_observer_table_without_raw_data(tmp_path):
    assert inter_observer_table(Results(tmp_path), tmp_path / "isbi2015", None) is None


@pytest.mark.mirror
def test_inter_observer_table(mirror_root, tmp_path):
    write_run(tmp_path, "farnet", isbi_metrics(1.5, 1.62))
    df = inter_observer_table(Results(tmp_path), mirror_root / "isbi2015", "farnet")
    assert list(df["Split"]) == ["train", "test1", "test2", "test1", "test2"]
    human = df.iloc[:3]
    assert (human["Reference"] == "senior vs junior doctor (human)").all()
    assert ((human["MRE"] > 0) & (human["MRE"] < 10)).all()  # the doctors disagree by millimetres
    assert df.iloc[3]["MRE"] == 1.5 and df.iloc[4]["4mm"] == 92.5


# ---------------------------------------------------------------------------------------------- make_tables


def test_make_tables_writes_the_committed_file_names(tmp_path):
    write_run(tmp_path, "farnet", isbi_metrics(1.5, 1.62), per_lm=per_landmark({"test1": [1.0], "test2": [2.0]}))
    write_run(tmp_path, "farnet_seed1", isbi_metrics(1.7, 1.8), seed=1)
    _hand_run(tmp_path, "hand_fold1", 1, [[1.0, 3.0]])
    written = make_tables(tmp_path, tmp_path / "raw")
    assert sorted(p.name for p in written) == sorted([
        "table3.md", "table3.csv", "table3_ours_vs_paper.csv", *(f"table{i}.{x}" for i in (1, 2, 4, 5)
                                                                 for x in ("md", "csv")),
        "decoding.md", "decoding.csv", "seeds.md", "seeds.csv", "seeds_each_seed.csv", "per_landmark.md",
        "per_landmark.csv",
        "summary.json"])
    assert all(p.parent == tmp_path / "tables" for p in written if p.name != "summary.json")
    summary = json.loads((tmp_path / "summary.json").read_text())  # the headline numbers, for `make exp-show`
    assert summary["farnet_test1_mre_mm"] == 1.5 and summary["farnet_test2_mre_mm"] == 1.62
    assert summary["farnet_test1_sdr_2mm"] == 80.0 and summary["table2_test1_mre_mm"] == {"MSFA+FR+EWC": 1.5}
    assert summary["hand_mre_mm"] == pytest.approx(1.0) and not any(k.startswith("spine") for k in summary)
    table1 = (tmp_path / "tables" / "table1.md").read_text()
    assert table1.startswith("# Table 1: backbones on ISBI 2015 Test1") and "| VGG-16 | not run |" in table1
    assert pd.read_csv(tmp_path / "tables" / "table3.csv")["Test1 MRE"].iloc[-2] == 1.5  # last: sub-pixel
    assert "Only 9 of the 895 hand images" in (tmp_path / "tables" / "table4.md").read_text()
    assert pd.read_csv(tmp_path / "tables" / "decoding.csv")["Run"].drop_duplicates().tolist() == [
        "farnet", "farnet_seed1"]
    assert "> **No run of this table has results yet.**" in (tmp_path / "tables" / "table5.md").read_text()


def _noisy_errors(shift: float, seed: int, n: int = 150, k: int = 19) -> list[list[float]]:
    """(n, k) radial errors around 1.5 mm plus ``shift``, the same images for every seed (noise by ``seed``)."""
    base = np.random.default_rng(0).gamma(2.0, 0.75, (n, k))
    return (base + shift + np.random.default_rng(seed).normal(0.0, 0.1, (n, k))).clip(0.0).tolist()


def test_table2_rows_get_intervals_paired_differences_and_verdicts(tmp_path, paper):
    """Each row of ours: its 95 % intervals over the 150 Test1 images, its MRE minus FARNet's on the same
    images with the paired interval, and a verdict; seed replicates of FARNet widen what counts as resolved."""
    from farnet.report.paper import seed_runs

    def run(name, shift, seed=0, **info):
        errors = _noisy_errors(shift, seed + 10 * len(name))
        mre = float(np.mean(errors))
        write_run(tmp_path, name, {"test1": split(mre, [80.0, 85.0, 90.0, 95.0])},
                  preds=predictions({"test1": errors}), seed=seed, **info)

    run("ewc", 0.0)
    run("aw", 0.4, loss="awing")  # clearly worse
    run("cat", 0.0, refinement="none", loss="l2")  # as good, up to its own noise
    results = Results(tmp_path)
    runs = table2_runs(results, paper["table2"])
    df = methods_table(results, paper["table2"], runs, seed_runs(results, paper["table3"]))
    aw, cat, ewc = (_rows(df, m).loc["ours"] for m in ("MSFA+FR+AW", "MSFA", "MSFA+FR+EWC"))
    assert aw["verdict"] == "worse" and aw["Δ MRE vs FARNet"] == pytest.approx(0.4, abs=0.05)
    low, high = map(float, aw["Δ 95% CI"].split("–"))
    assert 0 < low < aw["Δ MRE vs FARNet"] < high
    assert cat["verdict"] == "not resolved" and ewc["verdict"] == "not resolved" and ewc["Δ MRE vs FARNet"] == 0
    low, high = map(float, aw["MRE 95% CI"].split("–"))
    assert low < aw["MRE"] < high and "2mm 95% CI" in df.columns
    assert np.isnan(aw["seed SD"]) and "paper MRE in CI" not in df.columns  # quick runs: not the protocol
    assert _rows(df, "MSFA+FR+AW").loc["paper", "Δ MRE vs FARNet"] == pytest.approx(1.15 - 1.12)
    # two more seeds of FARNet whose MRE spread is larger than the AW row's difference: no longer resolved
    run("ewc_s1", 0.5, seed=1)
    run("ewc_s2", -0.5, seed=2)
    results = Results(tmp_path)
    df = methods_table(results, paper["table2"], table2_runs(results, paper["table2"]),
                       seed_runs(results, paper["table3"]))
    aw = _rows(df, "MSFA+FR+AW").loc["ours"]
    assert aw["seed SD"] == pytest.approx(0.5, abs=0.05) and aw["verdict"] == "not resolved"


def test_a_run_of_the_papers_protocol_says_whether_the_papers_number_is_inside_its_interval(tmp_path, paper):
    errors = _noisy_errors(-0.38, 1)  # about 1.12 mm: the paper's FARNet
    write_run(tmp_path, "farnet", {"test1": split(float(np.mean(errors)), [88.0, 92.0, 95.0, 98.0])},
              preds=predictions({"test1": errors}), profile="paper")
    results = Results(tmp_path)
    df = methods_table(results, paper["table2"], table2_runs(results, paper["table2"]))
    assert _rows(df, "MSFA+FR+EWC").loc["ours", "paper MRE in CI"] == "yes"


def test_table4_gives_the_pooled_interval_over_the_hand_images(tmp_path, paper):
    _hand_run(tmp_path, "hand_a", 1, [[1.0, 3.0], [1.5, 2.0], [0.5, 1.0]])
    _hand_run(tmp_path, "hand_b", 3, [[2.0, 6.0], [1.0, 1.0]])
    results = Results(tmp_path)
    ours = table4(results, paper["table4"], fold_runs(results, paper["table4"])).set_index("Source").loc["ours"]
    low, high = map(float, ours["MRE 95% CI"].split("–"))
    assert ours["images"] == 5 and low < ours["MRE"] < high and "2mm 95% CI" in ours.index


def _spine_predictions(split_name, true_px, noise, seed, size=(400.0, 1000.0)):
    """Predictions of one spine split: (N, K, 2) true points plus seeded noise, in original pixels."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, points in enumerate(true_px):
        for k, (x, y) in enumerate(points):
            dx, dy = rng.normal(0.0, noise, 2)
            rows.append({"split": split_name, "decode": "argmax", "image_id": f"{i:03d}", "landmark": k,
                         "name": f"L{k + 1}", "x_pred": x + dx, "y_pred": y + dy, "x_true": x, "y_true": y,
                         "error_px": float(np.hypot(dx, dy)), "error_mm": np.nan, "width": size[0],
                         "height": size[1]})
    return pd.DataFrame(rows)


def test_table5_gives_intervals_of_the_fold_mean_mse_and_rho_over_the_images(tmp_path, paper):
    """Each fold model's fractional MSE and ρ, averaged over the folds, with intervals over the images shared
    by every fold (the held-out and AASCE sets); the folds' own validation images get none."""
    true = np.random.default_rng(0).uniform([0, 0], [400, 1000], (40, 17, 2))
    for fold, seed in ((1, 1), (2, 2)):
        preds = pd.concat([_spine_predictions(s, true, 8.0, seed + 10 * j)
                           for j, s in enumerate(("test", "aasce_test", f"fold{fold}_val"))])
        write_run(tmp_path, f"spine_{fold}", _spine_metrics(fold, 0.0004, 0.99, 10.0), preds=preds,
                  dataset="spine_boostnet", fold=fold)
    results = Results(tmp_path)
    df = table5(results, paper["table5"], fold_runs(results, paper["table5"]))
    ours = df[df["Source"] == "ours"].set_index("Split")
    expected_mse = np.mean([(8.0 / 400) ** 2, (8.0 / 1000) ** 2])  # the noise in fractions of each axis
    for label in ("test (50)", "AASCE test (128)"):
        low, high = map(float, ours.loc[label, "MSE 95% CI"].split("–"))
        assert low < expected_mse < high
        low, high = map(float, ours.loc[label, "ρ 95% CI"].split("–"))
        assert 0.99 < low <= high < 1.0
    assert pd.isna(ours.loc["fold validation", "MSE 95% CI"])


def test_each_seed_gets_its_interval(tmp_path):
    from farnet.report.extra_tables import seed_intervals_table

    for run, seed in (("farnet", 0), ("rep", 1)):
        errors = _noisy_errors(0.1 * seed, seed)
        write_run(tmp_path, run, {"test1": split(float(np.mean(errors)), [80.0] * 4),
                                  "test2": split(float(np.mean(errors[:100])), [70.0] * 4)},
                  preds=predictions({"test1": errors, "test2": errors[:100]}), seed=seed)
    df = seed_intervals_table(Results(tmp_path), ["farnet", "rep"]).set_index(["run", "Split"])
    assert df.loc[("rep", "test1"), "seed"] == 1
    low, high = map(float, df.loc[("farnet", "test2"), "MRE 95% CI"].split("–"))
    assert low < df.loc[("farnet", "test2"), "MRE"] < high


def test_table3_rows_of_ours_get_intervals_on_both_test_sets(tmp_path, paper):
    errors1, errors2 = _noisy_errors(-0.38, 1), _noisy_errors(0.2, 2, n=100)
    preds = pd.concat([predictions({"test1": errors1, "test2": errors2}),
                       predictions({"test1": errors1, "test2": errors2}, decode="subpixel")])
    metrics = {"test1": split(float(np.mean(errors1)), [88.0, 92.0, 95.0, 98.0]),
               "test2": split(float(np.mean(errors2)), [70.0, 78.0, 85.0, 92.5])}
    metrics.update({f"{s}_subpixel": metrics[s] for s in ("test1", "test2")})
    df = table3(metrics, {**RUN, "profile": "paper"}, paper, predictions=preds)["table3"].set_index("Method")
    ours = df.loc["FARNet (ours, paper)"]
    for label in ("Test1", "Test2"):
        low, high = map(float, ours[f"{label} MRE 95% CI"].split("–"))
        assert low < ours[f"{label} MRE"] < high and ours[f"{label} 2mm 95% CI"]
    assert ours["paper Test1 MRE in CI"] == "yes"  # about 1.12 mm: the paper's
    assert ours["paper Test2 MRE in CI"] == "no"  # about 1.7 mm against the paper's 1.42
    assert df.loc["FARNet (ours, paper, sub-pixel decoding)", "Test1 MRE 95% CI"]
    assert pd.isna(df.loc["FARNet (paper)", "Test1 MRE 95% CI"])  # the paper's rows have none


def test_tables_4_and_5_say_whether_the_papers_number_is_inside_for_a_paper_protocol_run(tmp_path, paper):
    errors = [[0.6, 0.7], [0.5, 0.6], [0.7, 0.6], [0.6, 0.65]]  # about the paper's 0.62 mm
    write_run(tmp_path, "hand_p", {"fold1_test": split(0.63, [97.0] * 3, HAND_RADII, n_images=4)},
              preds=predictions({"fold1_test": errors}), dataset="hand_dha", fold=1, profile="paper",
              images_present=895, images_listed=895)
    true = np.random.default_rng(0).uniform([0, 0], [400, 1000], (40, 17, 2))
    preds = pd.concat([_spine_predictions(s, true, 8.0, j) for j, s in enumerate(("test", "aasce_test"))])
    write_run(tmp_path, "spine_p", _spine_metrics(1, 0.0002, 0.99, 10.0), preds=preds, dataset="spine_boostnet",
              fold=1, profile="paper")
    results = Results(tmp_path)
    hand = table4(results, paper["table4"], fold_runs(results, paper["table4"])).set_index("Source").loc["ours"]
    assert hand["paper MRE in CI"] == "yes"
    spine = table5(results, paper["table5"], fold_runs(results, paper["table5"]))
    test = spine[(spine["Source"] == "ours") & (spine["Split"] == "test (50)")].iloc[0]
    assert test["paper MSE in CI"] == "no" and test["paper ρ in CI"] == "no"  # 0.0017 and 0.98: far off here


def test_decoding_and_per_landmark_tables_get_intervals(tmp_path):
    rng = np.random.default_rng(5)
    errors = rng.gamma(2.0, 0.75, (60, 3))
    finer = (errors - 0.2 + rng.normal(0, 0.05, errors.shape)).clip(0)  # sub-pixel: about 0.2 mm better
    preds = pd.concat([predictions({"test1": errors.tolist(), "test2": errors[:40].tolist()}),
                       predictions({"test1": finer.tolist(), "test2": finer[:40].tolist()}, decode="subpixel")])
    write_run(tmp_path, "farnet", isbi_metrics(float(errors.mean()), float(errors[:40].mean())), preds=preds,
              per_lm=per_landmark({"test1": list(errors.mean(axis=0)), "test2": list(errors[:40].mean(axis=0))}))
    results = Results(tmp_path)
    decoding = decoding_table(results, ["farnet"]).set_index("Split")
    assert decoding.loc["test1", "sub-pixel verdict"] == "better"
    low, high = map(float, decoding.loc["test1", "Δ sub-pixel 95% CI"].split("–"))
    assert -0.25 < low < high < -0.15  # about -0.2 mm, tight over 60 images
    per_lm = per_landmark_table(results, "farnet").set_index("landmark")
    low, high = map(float, per_lm.loc[2, "test1 MRE 95% CI"].split("–"))
    assert low < errors[:, 1].mean() < high  # landmark 2 (numbered from 1) is column 1
