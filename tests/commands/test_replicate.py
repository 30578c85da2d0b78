"""``farnet replicate`` at a tiny size on the CPU: the command a GPU node or cloud box without DVC runs, dry-run from a
carry the test builds, in a process where dvc and dvclive cannot be imported and the package is found through
PYTHONPATH alone; and the train stage's ends (a signal, a budget) that it relies on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest

from farnet.cli import main
from farnet.data.carry import pack_carry
from farnet.core.errors import TrainingInterrupted
from farnet.commands.protocol import replication_params
from farnet.core.provenance import code_digest, replication_gaps
from farnet.report.results import PER_LANDMARK_COLUMNS, PREDICTION_COLUMNS
from helpers import ROOT, write_committed_params, write_prepared

FILES = ("run.json", "progress.json", "train_info.json", "metrics.json", "per_landmark.csv", "predictions.csv",
         "benchmark.json")
K = 3  # landmarks of the synthetic data; 4 training, 2 Test1 and 2 Test2 images at 64x64

# dvc and dvclive made unimportable, then `python -m farnet ...` (the repository on PYTHONPATH, not installed)
BLOCKED = ("import runpy, sys; sys.modules.update(dvc=None, dvclive=None); "
           "sys.argv = ['farnet', *sys.argv[1:]]; runpy.run_module('farnet', run_name='__main__', alter_sys=True)")


def test_dry_run_writes_every_result_without_dvc(tmp_path):
    prepared = write_prepared(tmp_path, input_hw=(64, 64), k=K)
    carry = tmp_path / "carry.zip"
    pack_carry(prepared, carry, codec="jpeg", quality=90, progress=False)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", BLOCKED, "replicate", "--carry", str(carry), "--out", str(out), "--device",
               "cpu", "--budget-min", "10", "--probe-steps", "2", "--steps", "3", "--bench-repeats", "1",
               "--paths", "eager,deferred", "--path-steps", "2", "--bench-batches", "1,2", "--side-by-side", "2",
               "--side-steps", "3", "--side-warmup", "1",
               "--params", str(write_committed_params(tmp_path)), "--work", str(tmp_path / "work"), "--no-progress"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)

    info = json.loads((out / "train_info.json").read_text())
    assert info["steps"] == 3 and info["n_train_images"] == 4 and info["device"] == "cpu"
    assert info["schedule"] == {"full": False, "planned_epochs": 300, "planned_lr_milestones": [200], "epochs": 1,
                                "lr_milestones": [], "steps": 3, "reduced_by": "step limit", "stopped": "steps",
                                "probe_step_s": info["schedule"]["probe_step_s"]}
    assert info["schedule"]["probe_step_s"] > 0
    assert json.loads((out / "progress.json").read_text())["steps_done"] == 3

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"].startswith("REDUCED: ") and "reduced schedule (step limit): 1 of 300 epochs" in \
        metrics["protocol"] and "input 64x64 instead of the paper's 800x640" in metrics["protocol"]
    for split in ("test1", "test2", "test1_subpixel", "test2_guided"):
        assert metrics[split]["n_images"] == 2 and metrics[split]["mre_mm"] > 0
        assert set(metrics[split]["sdr"]) == {"2.0", "2.5", "3.0", "4.0"} and "outliers_pct" in metrics[split]

    per_landmark = pd.read_csv(out / "per_landmark.csv")
    assert set(PER_LANDMARK_COLUMNS) | {"mre_mm", "sd_mm"} <= set(per_landmark.columns)
    assert len(per_landmark) == 2 * 3 * K  # splits x decoders x landmarks
    predictions = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert list(predictions.columns) == [*PREDICTION_COLUMNS, "width", "height"]  # each image's original size
    assert len(predictions) == (2 + 2) * 3 * K and predictions["error_mm"].notna().all()

    bench = json.loads((out / "benchmark.json").read_text())
    assert bench["device"] == "cpu" and bench["input_hw"] == [64, 64]
    assert bench["train_step"]["median_s"] > 0 and bench["inference"]["median_s"] > 0
    assert bench["in_run"]["steps"] == 3 and bench["in_run"]["step_path"] == info["step_path"]
    paths = bench["step_paths"]
    assert set(paths) == {"eager", "deferred"} and all(p["status"] == "ok" and p["step_s"] > 0 for p in paths.values())
    assert bench["chosen_path"] == info["step_path"] == run_info_path(out) and info["step_path"] in paths
    for what in ("train_step", "inference"):
        assert set(bench["batches"][what]) == {"1", "2"} and bench["batches"][f"best_batch_{what}"] in (1, 2)
    side = bench["side_by_side"]["runs"]  # two processes (a single one is the same code, and a test's time)
    assert list(side) == ["2"] and "errors" not in side["2"] and side["2"]["completed"] == 2
    assert side["2"]["runs"] == ["farnet", "msfa_fr"] and len(side["2"]["per_process_steps_per_s"]) == 2
    assert side["2"]["total_steps_per_s"] > 0 and "speedup_vs_1" not in side["2"]  # no single run to compare
    assert side["2"]["limit_s"] == 300.0  # no deadline: the round's own limit
    # how much of the schedule ran and what all of it takes: 300 epochs of 4 images, batch 1
    assert bench["schedule"]["planned_steps"] == 1200 and bench["schedule"]["steps_done"] == 3
    assert bench["schedule"]["projected_full_s"] == pytest.approx(1200 * paths[info["step_path"]]["step_s"], rel=1e-3)
    assert f"trained on {info['step_path']}: 3 of 1,200 planned steps (0.2 %)" in done.stdout

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["carry"]["form"] == "lossy" and run["carry"]["codec"] == "jpeg"
    assert run["profile"] == "paper" and run["data_form"]["quality"] == 90
    assert run["code_digest"] == code_digest(ROOT)  # the code that ran, for a machine without git
    assert any(gap.startswith("inputs re-encoded (carry: jpeg q90, lossy") for gap in run["replication_gaps"])

    # the same model evaluated again, on a lossless form of the carry: what the lossy form changed
    lossless = tmp_path / "lossless.zip"
    pack_carry(prepared, lossless, codec="png", progress=False)
    again = tmp_path / "again"
    assert main(["replicate", "--carry", str(lossless), "--out", str(again), "--device", "cpu", "--no-progress",
                 "--evaluate", str(tmp_path / "work" / "model" / "model.pt"),
                 "--params", str(tmp_path / "params.yaml"), "--work", str(tmp_path / "work-again")]) == 0
    assert sorted(p.name for p in again.iterdir()) == sorted(set(FILES) - {"progress.json", "benchmark.json"})
    rerun = json.loads((again / "metrics.json").read_text())
    assert rerun["schedule"] == info["schedule"] and rerun["test1"]["n_images"] == 2
    assert json.loads((again / "run.json").read_text())["evaluated_model"].endswith("model.pt")
    assert not any(gap.startswith("inputs re-encoded") for gap in json.loads((again / "run.json").read_text())[
        "replication_gaps"])
    # the very carry the model was evaluated on: the very same metrics
    assert main(["replicate", "--carry", str(carry), "--out", str(tmp_path / "same"), "--device", "cpu",
                 "--no-progress", "--evaluate", str(tmp_path / "work" / "model" / "model.pt"),
                 "--params", str(tmp_path / "params.yaml"), "--work", str(tmp_path / "work-same")]) == 0
    assert json.loads((tmp_path / "same" / "metrics.json").read_text())["test1"] == metrics["test1"]


def run_info_path(out):
    return json.loads((out / "run.json").read_text())["step_path"]


def test_parameters_are_the_paper_profile_at_the_carry_size(tmp_path):
    path = write_committed_params(tmp_path)
    path.write_text(path.read_text().replace("profile: paper", "profile: quick", 1))
    params, paper_hw = replication_params(path, "farnet", (64, 64))
    assert params.profile == "paper" and params.run == "farnet" and paper_hw == (800, 640)
    assert params.train.epochs == 300 and params.train.lr_milestones == (200,) and params.heatmap.sigma_px == 10.0
    assert params.input_hw == (64, 64) and params.train.checkpoint_every == 300
    assert replication_params(path, "farnet", (800, 640), (320, 256))[0].input_hw == (320, 256)
    with pytest.raises(Exception, match=r"run 'nope' is not defined under runs"):
        replication_params(path, "nope", (64, 64))


def test_a_reduced_schedule_and_a_lossy_carry_are_replication_gaps():
    info = {"profile": "paper", "pretrained": "imagenet", "full_set": True}
    assert replication_gaps(info) == []
    schedule = {"full": False, "planned_epochs": 300, "epochs": 40, "lr_milestones": [27], "steps": 6000,
                "reduced_by": "time budget", "stopped": None}
    form = {"form": "lossy", "codec": "jpeg", "quality": 92, "mean_abs_diff": 0.5}
    assert replication_gaps({**info, "schedule": schedule, "data_form": form}) == [
        "reduced schedule (time budget): 40 of 300 epochs, lr drop at [27]",
        "inputs re-encoded (carry: jpeg q92, lossy, mean |Δ grey| 0.5 of 255)"]
    assert replication_gaps({**info, "schedule": {**schedule, "full": True},
                             "data_form": {"form": "lossless", "codec": "png"}}) == []


def _farnet_params(tmp_path):
    params, _ = replication_params(write_committed_params(tmp_path), "farnet", (64, 64))
    return replace(params, train=replace(params.train, epochs=2, log_every_steps=1, checkpoint_every=1))


def test_a_sigterm_leaves_a_usable_model_and_train_info(tmp_path, monkeypatch):
    from farnet.stages.train import train_run
    from farnet.models.trained import load_trained_model

    monkeypatch.setenv("FARNET_DEVICE", "cpu")
    write_prepared(tmp_path, input_hw=(64, 64), k=K)
    signalled = []

    def log(step, values):  # a scheduler's SIGTERM, during the second step
        if step == 2 and not signalled:
            signalled.append(step)
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="SIGTERM received: stopped after step 2 of epoch 1"):
        train_run(_farnet_params(tmp_path), tmp_path / "prepared", tmp_path / "model", None, progress=False, log=log)
    info = json.loads((tmp_path / "model" / "train_info.json").read_text())
    assert info["steps"] == 2 and info["schedule"]["stopped"] == "signal" and info["schedule"]["full"] is False
    trained = load_trained_model(tmp_path / "model" / "model.pt")
    assert trained.num_landmarks == K and trained.input_hw == (64, 64)
    assert (tmp_path / "model" / "state" / "checkpoint.pt").is_file()  # the run can still be resumed


def test_the_fastest_step_path_that_worked_trains():
    from farnet.commands.bench.side_by_side import fastest_path

    ok = lambda s: {"status": "ok", "step_s": s}  # noqa: E731
    assert fastest_path({"eager": ok(0.020), "deferred": ok(0.015), "graph": ok(0.009), "compile": ok(0.0088)}) \
        == "graph"  # compile is faster by less than the 3 % margin
    assert fastest_path({"eager": ok(0.020), "graph": ok(0.009), "compile": ok(0.006)}) == "compile"
    assert fastest_path({"eager": ok(0.020), "graph": {"status": "failed", "reason": "capture"}}) == "eager"
    assert fastest_path({"graph": {"status": "failed", "reason": "capture"}}) == "eager"


def test_evaluate_refuses_a_model_of_another_dataset_or_landmark_count_before_evaluating(tmp_path, capsys,
                                                                                       monkeypatch):
    """A 37-landmark hand model on an ISBI carry failed only after Test1's inference."""
    from model_files import TinyNet, write_model

    from farnet.models import trained as trained_module

    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))  # the files hold TinyNets

    carry = tmp_path / "carry.zip"
    pack_carry(write_prepared(tmp_path, input_hw=(64, 64), k=K), carry, codec="png", progress=False)
    params = str(write_committed_params(tmp_path))

    def evaluate(model, out):
        return main(["replicate", "--carry", str(carry), "--out", str(tmp_path / out), "--device", "cpu",
                     "--no-progress", "--evaluate", str(model), "--params", params, "--work", str(tmp_path / "w")])

    hand = write_model(tmp_path / "hand" / "model.pt", k=37, input_hw=(64, 64), dataset="hand_dha", net=TinyNet(37))
    assert evaluate(hand, "hand-out") == 2
    assert "trained on 'hand_dha' (37 landmarks), but" in capsys.readouterr().err
    assert not (tmp_path / "hand-out" / "run.json").exists()  # refused before anything ran
    other_k = write_model(tmp_path / "five" / "model.pt", k=K + 2, input_hw=(64, 64), dataset="isbi2015",
                          net=TinyNet(K + 2))
    (other_k.parent / "train_info.json").write_text(json.dumps({"steps": 1, "schedule": {}}))
    assert evaluate(other_k, "five-out") == 2
    assert f"model predicts {K + 2} landmarks (dataset 'isbi2015'), but {K} are expected" in capsys.readouterr().err
    assert not (tmp_path / "five-out" / "metrics.json").exists()
