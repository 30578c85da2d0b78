"""Tests of farnet.tables and the paper's reference numbers in farnet/reference/paper_tables.yaml."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from farnet.errors import DataError
from farnet.tables import (
    load_paper_tables, ours_vs_paper, read_json, read_predictions, split_metrics, table3,
    to_markdown, write_table,
)

PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "paper" / "farnet-paper.txt"
RADII = ["2.0", "2.5", "3.0", "4.0"]


def split(mre, sdr):
    return {"n_images": 150, "mre_mm": mre, "sd_mm": 1.0, "sdr": dict(zip(RADII, sdr))}


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


# ---------------------------------------------------------------------------------------------- inputs


def test_read_json_errors(tmp_path):
    good = tmp_path / "m.json"
    good.write_text(json.dumps(METRICS))
    assert read_json(good)["test1"]["mre_mm"] == 1.5
    with pytest.raises(DataError, match="file not found"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(DataError, match=r"bad.json:3: invalid JSON"):
        read_json(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object"):
        read_json(listed)


def _predictions():
    rows = []
    for split_name, errors in (("test1", [1.0, 3.0, 2.0, 2.0]), ("test2", [4.0, 4.0, 1.0, 1.0])):
        for i, error in enumerate(errors):
            rows.append({"split": split_name, "decode": "argmax", "image_id": i // 2, "landmark": i % 2,
                         "name": ["sella", "nasion"][i % 2], "x_pred": 0.0, "y_pred": 0.0, "x_true": 0.0,
                         "y_true": 0.0, "error_mm": error})
    return pd.DataFrame(rows)


def test_read_predictions(tmp_path):
    path = tmp_path / "p.csv"
    _predictions().to_csv(path, index=False)
    df = read_predictions(path)
    assert len(df) == 8 and df["error_mm"].tolist()[:4] == [1.0, 3.0, 2.0, 2.0]


def test_read_predictions_errors(tmp_path):
    path = tmp_path / "p.csv"
    _predictions().drop(columns="y_true").to_csv(path, index=False)
    with pytest.raises(DataError, match=r"p.csv:1: missing columns \['y_true'\]"):
        read_predictions(path)
    bad = _predictions()
    bad.loc[2, "error_mm"] = float("nan")
    bad.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"p.csv:4: error_mm is not a finite number"):
        read_predictions(path)
    with pytest.raises(DataError, match="file not found"):
        read_predictions(tmp_path / "none.csv")
