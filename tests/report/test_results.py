"""Tests of farnet.report.results: the validating reader of results/ and the selection of runs by run info."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fake_results import isbi_metrics, per_landmark, predictions, write_run

from farnet.core.errors import DataError
from farnet.report.results import Results, TableRuns


@pytest.fixture
def results(tmp_path):
    write_run(tmp_path, "farnet", isbi_metrics(1.5, 1.62))
    return Results(tmp_path)


# ---------------------------------------------------------------------------------------------- JSON files


def test_metrics_and_info(results):
    assert results.metrics("farnet")["test1"]["mre_mm"] == 1.5
    assert results.metrics("farnet", "test2")["mre_mm"] == 1.62
    assert results.info("farnet")["backbone"] == "densenet121"


def test_metrics_errors_name_the_file(results, tmp_path):
    with pytest.raises(DataError, match=r"metrics/missing.json: file not found"):
        results.metrics("missing")
    with pytest.raises(DataError, match=r"metrics/farnet.json: no split 'fold1_test'"):
        results.metrics("farnet", "fold1_test")
    (tmp_path / "metrics" / "bad.json").write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(DataError, match=r"metrics/bad.json:3: invalid JSON"):
        results.metrics("bad")
    (tmp_path / "metrics" / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"metrics/list.json: expected a JSON object, got list"):
        results.metrics("list")


def test_run_info_must_state_what_runs_are_selected_by(tmp_path):
    write_run(tmp_path, "old", {})
    info = json.loads((tmp_path / "runs" / "old.json").read_text())
    del info["seed"], info["fold"]
    (tmp_path / "runs" / "old.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"runs/old.json: missing keys \['fold', 'seed'\]"):
        Results(tmp_path).info("old")
    with pytest.raises(DataError, match=r"runs/old.json: missing keys"):
        Results(tmp_path).matching(dataset="isbi2015")  # selection reads every run info


def test_a_run_needs_metrics_and_run_info(results, tmp_path):
    (tmp_path / "runs" / "half.json").write_text(json.dumps({}))  # evaluate stopped before its metrics
    assert results.runs() == ["farnet"]
    assert results.has("farnet") and not results.has("half")


# ---------------------------------------------------------------------------------------------- CSV files


def _two_images():
    return predictions({"test1": [[1.0, 3.0], [2.0, 2.0]], "test2": [[4.0, 4.0], [1.0, 1.0]]})


def test_predictions(tmp_path):
    write_run(tmp_path, "a", {}, preds=_two_images())
    df = Results(tmp_path).predictions("a")
    assert len(df) == 8 and df["error_mm"].tolist()[:4] == [1.0, 3.0, 2.0, 2.0]
    assert df["image_id"].tolist()[:2] == ["001", "001"]  # ids stay text: "001", not 1


def test_predictions_without_mm_are_accepted(tmp_path):
    """The spine is measured in fractions of the image: error_mm is empty on every row, error_px is not."""
    write_run(tmp_path, "spine", {}, preds=_two_images().assign(error_mm=float("nan")))
    df = Results(tmp_path).predictions("spine")
    assert df["error_mm"].isna().all() and df["error_px"].iloc[1] == 30.0


def test_predictions_errors(tmp_path):
    path = tmp_path / "predictions" / "a.csv"
    write_run(tmp_path, "a", {}, preds=_two_images().drop(columns="y_true"))
    with pytest.raises(DataError, match=r"a.csv:1: missing columns \['y_true'\]"):
        Results(tmp_path).predictions("a")
    bad = _two_images()
    bad.loc[2, "error_mm"] = float("nan")
    bad.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"a.csv:4: error_mm is not a finite number"):
        Results(tmp_path).predictions("a")
    bad = _two_images()
    bad.loc[5, "error_px"] = float("inf")
    bad.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"a.csv:7: error_px is not a finite number"):
        Results(tmp_path).predictions("a")
    with pytest.raises(DataError, match=r"predictions/none.csv: file not found"):
        Results(tmp_path).predictions("none")


def test_per_landmark(tmp_path):
    write_run(tmp_path, "a", {}, per_lm=per_landmark({"test1": [1.0, 2.0]}))
    assert Results(tmp_path).per_landmark("a")["mre_mm"].tolist() == [1.0, 2.0, 0.9, 1.9]
    per_landmark({"test1": [1.0]}).drop(columns="sd_mm").to_csv(tmp_path / "per_landmark" / "a.csv", index=False)
    with pytest.raises(DataError, match=r"a.csv:1: missing columns \['mre_mm', 'sd_mm'\]"):
        Results(tmp_path).per_landmark("a")
    pd.DataFrame({"split": ["test1"]}).to_csv(tmp_path / "per_landmark" / "a.csv", index=False)
    with pytest.raises(DataError, match=r"a.csv:1: missing columns \['decode', 'landmark', 'name'\]"):
        Results(tmp_path).per_landmark("a")


# ---------------------------------------------------------------------------------------------- selection


def test_matching_reads_run_info_not_names(tmp_path):
    write_run(tmp_path, "zz", {}, backbone="vgg16")
    write_run(tmp_path, "vgg16", {}, backbone="resnet101")
    write_run(tmp_path, "vgg16_seed1", {}, backbone="vgg16", seed=1)
    results = Results(tmp_path)
    assert results.matching(backbone="vgg16") == ["vgg16_seed1", "zz"]
    assert results.matching(backbone="vgg16", seed=0) == ["zz"]
    assert results.matching(backbone="vgg19") == []
    with pytest.raises(ValueError, match=r"not by \['name'\]"):
        results.matching(name="vgg16")


def test_select_shows_the_first_of_several_matches_by_name(tmp_path):
    for run in ("b_run", "a_run", "c_run"):
        write_run(tmp_path, run, {}, backbone="vgg19" if run == "c_run" else "vgg16")
    runs = Results(tmp_path).select({"VGG-16": {"backbone": "vgg16"}, "VGG-19": {"backbone": "vgg19"},
                                     "ResNet-101": {"backbone": "resnet101"}})
    assert runs.rows == {"VGG-16": "a_run", "VGG-19": "c_run", "ResNet-101": None}
    assert runs.duplicates == {"VGG-16": ("a_run", "b_run")}
    assert runs.present == ["a_run", "c_run"] and runs.first == "a_run"


def test_table_runs_of_plain_runs():
    runs = TableRuns.of(["x", "y"])
    assert runs.rows == {"x": "x", "y": "y"} and runs.duplicates == {}
    assert TableRuns({"a": None}).first is None
