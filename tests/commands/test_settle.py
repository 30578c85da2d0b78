"""`farnet settle`: settling runs resolved from a plan, measured on the training images they never see, with the
argmax floor of their input size; a finished run is not trained again."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from farnet.commands import settle
from farnet.core.errors import ConfigError
from helpers import committed_params


def _plan(**runs) -> dict:
    return {"profile": "cpu", "run": "farnet", "common": {"data": {"train_limit": 120}, "train": {"epochs": 5}},
            "runs": runs}


def test_a_settling_run_is_the_plans_run_with_the_shared_and_its_own_changes(tmp_path):
    raw = committed_params()
    plan = _plan(base={}, sigma6={"heatmap": {"sigma_px": 6.0}}, lr={"train": {"lr": 2e-3}})
    base, sigma6, lr = (settle.settling_params(raw, plan, name, tmp_path) for name in ("base", "sigma6", "lr"))
    cpu = settle.settling_params(raw, {**plan, "common": {}}, "base", tmp_path)
    assert base.data.train_limit == 120 and base.train.epochs == 5  # the shared changes
    assert base.train.lr == cpu.train.lr and base.dataset.augment == cpu.dataset.augment == "payer"  # the cpu recipe
    assert (sigma6.heatmap.sigma_px, sigma6.train.lr) == (6.0, base.train.lr)
    assert (lr.train.lr, lr.heatmap.sigma_px, lr.data.train_limit) == (2e-3, base.heatmap.sigma_px, 120)
    with pytest.raises(ConfigError, match=r"plan\.yaml: runs\.bad: .*heatmap\.sigma"):
        settle.settling_params(raw, _plan(bad={"heatmap": {"sigma": 6.0}}), "bad", tmp_path / "plan.yaml")
    with pytest.raises(ConfigError, match="missing key 'run'"):
        settle.plan_runs({"profile": "cpu", "runs": {"a": {}}}, tmp_path / "plan.yaml")


def test_the_table_reads_the_last_measurement_of_each_run():
    record = {"name": "sigma6", "profile": "cpu", "overrides": {"heatmap": {"sigma_px": 6.0}, "train": {"epochs": 5}},
              "train_info": {"steps": 600, "train_wall_s": 570.0,
                             "monitor": [{"epoch": 5, "heldout/mre_mm": 2.5, "heldout/outliers_pct": 1.0,
                                          "test1/mre_mm": 2.7, "test1/outliers_pct": 1.5}]},
              "argmax_floor": {"test1": 0.29}, "cpu": "AMD EPYC (2 cores) avx512-bf16", "git_commit": "abcdef12"}
    table = settle.settling_table([record])
    row = [line for line in table.splitlines() if line.startswith("| sigma6")][0].split("|")
    assert "heatmap.sigma_px=6.0, train.epochs=5" in row[2] and row[4].strip() == "0.95"  # s/step
    assert [c.strip() for c in row[5:8]] == ["2.50", "1.00", "2.70"] and row[9].strip() == "nan"  # no Test2
    assert "abcdef1" in table and "avx512-bf16" in table
    assert "REDUCED RUNS — not a replication" in table and "profile cpu" in table


@pytest.mark.mirror
@pytest.mark.slow
def test_settle_trains_each_run_once_and_measures_it_on_the_held_out_images(mirror_root, tmp_path, monkeypatch):
    raw = committed_params()
    raw["profiles"]["tiny"] = {"extends": "cpu", "datasets": {"isbi2015": {"input_hw": [64, 64]}},
                               "runs": {"farnet": {"heatmap": {"sigma_px": 1.0}, "train": {"warmup_steps": 1},
                                                   "eval": {"batch_size": 50}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    plan = {"profile": "tiny", "run": "farnet",
            "common": {"data": {"train_limit": 3, "input_hw": None}, "train": {"epochs": 1, "monitor_every": 1}},
            "runs": {"base": {}, "large": {"data": {"input_hw": [128, 128]}}}}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    monkeypatch.setenv("FARNET_DATA_MIRROR", str(mirror_root))
    monkeypatch.setenv("FARNET_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    args = ["--plan", "plan.yaml", "--work", "work", "--out", "out", "--no-progress"]
    parser = __import__("argparse").ArgumentParser()
    settle.add_arguments(parser)
    assert settle.run(parser.parse_args(args)) == 0
    base, large = (json.loads((tmp_path / "out" / f"{n}.json").read_text()) for n in ("base", "large"))
    last = base["train_info"]["monitor"][-1]
    assert set(last) == {"epoch", *(f"{s}/{k}" for s in ("heldout", "test1", "test2")
                                    for k in ("mre_mm", "outliers_pct"))}
    assert base["train_info"]["n_train_images"] == 3 and base["train_info"]["steps"] == 3
    # the floor: perfect heatmaps decoded by argmax, finer at 128x128 than at 64x64, never zero
    assert 0 < large["argmax_floor"]["test1"] < base["argmax_floor"]["test1"]
    assert np.isfinite(last["heldout/mre_mm"]) and base["overrides"]["data"] == {"train_limit": 3, "input_hw": None}
    assert "| large" in (tmp_path / "out" / "settling.md").read_text()
    assert json.loads((tmp_path / "work" / "prepared" / "isbi2015" / "dataset.json").read_text())["input_hw"] == [64, 64]
    mtime = (tmp_path / "out" / "base.json").stat().st_mtime
    assert settle.run(parser.parse_args(args + ["--only", "base"])) == 0  # done: not trained again
    assert (tmp_path / "out" / "base.json").stat().st_mtime == mtime
    with pytest.raises(ConfigError, match="no settling run 'nope'"):
        settle.run(parser.parse_args(args + ["--only", "nope"]))
