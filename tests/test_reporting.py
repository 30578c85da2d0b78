"""Tests of farnet.reporting's per-table list of runs: what it lists and when it warns that rows differ."""

from __future__ import annotations

import json

import pytest

from farnet.reporting import Results, runs_header

RUN = {
    "experiment": "a", "run": "a", "profile": "quick", "dataset": "isbi2015", "data_source": "mirror",
    "data_note": "half-resolution JPEGs", "full_set": False, "n_train_images": 40, "pretrained": "none",
    "backbone": "densenet121", "epochs": 1, "steps": 40, "input_hw": [160, 128], "sigma_px": 4.0, "loss": "ewc",
    "alpha": 40.0, "optimizer": "adam", "lr": 1e-3, "select": "last", "hardware": "AMD EPYC (2 cores)",
    "train_wall_s": 12.5, "git_commit": "abc1234", "params_hash": "0123456789ab", "date": "2026-12-01T03:00:00",
}


def _results(tmp_path, infos: dict[str, dict]) -> Results:
    for folder in ("metrics", "runs"):
        (tmp_path / folder).mkdir()
    for run, info in infos.items():
        (tmp_path / "metrics" / f"{run}.json").write_text("{}")
        (tmp_path / "runs" / f"{run}.json").write_text(json.dumps({**RUN, **info, "run": run}))
    return Results(tmp_path)


def test_lists_every_run_and_the_missing_ones(tmp_path):
    header = runs_header(_results(tmp_path, {"a": {}, "b": {"train_wall_s": 99.0}}), ["a", "b", "c"])
    assert "| a | quick | 160×128 | 40 | 1 | 40 | 12.5 |" in header
    assert "| b | quick | 160×128 | 40 | 1 | 40 | 99.0 |" in header
    assert "| c | not run |" in header
    assert "not trained alike" not in header  # wall time and seed may differ between comparable rows


@pytest.mark.parametrize("change, named", [
    ({"input_hw": [320, 256]}, "input_hw"),
    ({"full_set": True, "n_train_images": 150}, "full_set"),
    ({"epochs": 3}, "epochs"),
    ({"lr": 1e-4}, "lr"),
])
def test_warns_when_rows_were_trained_differently(tmp_path, change, named):
    header = runs_header(_results(tmp_path, {"a": {}, "b": change}), ["a", "b"])
    assert "**These rows were not trained alike" in header
    assert f"({named} differ;" in header
