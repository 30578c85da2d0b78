"""The DVC graph, and the real stage scripts end to end on the mirror's ISBI images at a tiny size."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import committed_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _params(stage):
    return set(STAGES[stage]["do"].get("params", []) if "do" in STAGES[stage] else STAGES[stage].get("params", []))


def _body(stage):
    return STAGES[stage]["do"] if "do" in STAGES[stage] else STAGES[stage]


def test_every_stage_script_exists():
    for name in STAGES:
        script = _body(name)["cmd"].split()[1]
        assert (ROOT / script).is_file(), f"{name}: {script}"


def test_only_resolve_source_and_fetch_read_params_yaml():
    """The other stages depend on their own resolved values (tests/stages/test_resolve.py), never on whole sections."""
    assert {name for name in STAGES if _params(name)} == {"resolve", "source", "fetch"}
    assert _params("fetch") == _params("source") == {"datasets.${key}"}  # where from, not the profile's sizes
    assert {"profile", "profiles", "loss", "runs"} <= _params("resolve")
    for stage, resolved in (("train", "resolved/${key}/train.json"), ("evaluate", "resolved/${key}/evaluate.json"),
                            ("prepare", "resolved/datasets/${key}.json")):
        assert resolved in _body(stage)["deps"] and f"--resolved {resolved}" in _body(stage)["cmd"]
    assert "models/${key}/model.pt" in _body("evaluate")["deps"]


def test_every_run_and_dataset_resolves():
    from farnet.config import load_params

    raw = committed_params()
    assert set(raw["datasets"]) == {"isbi2015", "hand_dha", "spine_boostnet"}
    for profile in ("paper", *raw["profiles"]):
        raw["profile"] = profile
        path = ROOT / "tests" / f".params-{profile}.yaml"
        path.write_text(yaml.safe_dump(raw))
        try:
            for run in raw["runs"]:
                p = load_params(path, run=run)
                assert p.run == run and p.data.dataset == raw["runs"][run]["dataset"]
        finally:
            path.unlink()


def test_metrics_are_declared_for_dvc():
    assert any("results/metrics/${key}.json" in m for m in _body("evaluate")["metrics"])


def _run(script, *args, env):
    result = subprocess.run([sys.executable, f"pipelines/{script}.py", *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.mirror
@pytest.mark.slow
def test_stages_end_to_end_on_real_images(mirror_root, tmp_path):
    params = committed_params()
    params["profile"] = "tiny"
    params["profiles"]["tiny"] = {"datasets": {"isbi2015": {"input_hw": [64, 64]}},
                                  "data": {"train_limit": 2}, "heatmap": {"sigma_px": 1.5},
                                  "train": {"epochs": 1, "lr_milestones": []}, "eval": {"batch_size": 16}}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    env = {**os.environ, "FARNET_DATA_MIRROR": str(mirror_root), "FARNET_DEVICE": "cpu"}
    raw, prepared, models, results = (tmp_path / d for d in ("raw", "prepared", "models", "results"))

    assert "400 images from mirror" in _run("fetch", "--params", p, "--dataset", "isbi2015", "--raw", raw, env=env)
    assert "'train': 150, 'test1': 150, 'test2': 100" in _run("prepare", "--params", p, "--dataset", "isbi2015",
                                                              "--raw", raw, "--prepared", prepared, env=env)
    assert "resolved" in _run("resolve", "--params", p, "--out", tmp_path / "resolved", env=env)
    # as DVC runs it: from the run's own resolved values (evaluate below resolves from --params, as by hand)
    _run("train", "farnet", "--resolved", tmp_path / "resolved/farnet/train.json", "--prepared", prepared,
         "--models", models, "--train-logs", results / "train", env=env)
    assert not any((models / "farnet" / "state").iterdir())  # a finished run keeps its model, not its state
    if platform.libc_ver()[0] == "glibc" and env.get("FARNET_TUNE_MALLOC") != "0":  # the stage re-executed itself
        assert json.loads((models / "farnet" / "train_info.json").read_text())["malloc"].startswith("tuned (")
    state = torch.load(models / "farnet" / "model.pt", weights_only=True)
    assert state["meta"]["num_landmarks"] == 19 and state["meta"]["input_hw"] == [64, 64]
    assert len(state["meta"]["landmark_names"]) == 19 and state["meta"]["params"]["profile"] == "tiny"
    out = _run("evaluate", "farnet", "--params", p, "--prepared", prepared, "--models", models,
               "--results", results, env=env)
    assert "farnet test1: MRE" in out and "farnet test2: MRE" in out
    metrics = json.loads((results / "metrics/farnet.json").read_text())
    assert metrics["test1"]["n_images"] == 150 and metrics["test2"]["n_images"] == 100
    assert set(metrics["test1"]["sdr"]) == {"2.0", "2.5", "3.0", "4.0"}
    assert {"test1_subpixel", "test1_guided", "test2_guided"} <= set(metrics)  # beyond the paper, own keys
    assert 0 <= metrics["test1_guided"]["outliers_pct"] <= 100 and "outliers_pct" in metrics["test1"]
    assert 0 < metrics["test1"]["mre_mm"] < 300  # within the 193 x 240 mm image's diagonal
    run = json.loads((results / "runs/farnet.json").read_text())
    assert run["profile"] == "tiny" and run["data_source"] == "mirror" and not run["full_set"]
    assert run["precision"] == "auto" and run["fast_path"] not in ("", "auto")  # what "auto" became is recorded
    assert run["inference"]["path"] == "eager" and run["fast_path"].startswith(run["inference"]["precision"])
    _run("tables", "--results", results, "--raw", raw, env=env)
    table = (results / "tables/table3.md").read_text()
    assert "REDUCED RUN" in table and "FARNet (paper)" in table and "FARNet (ours, tiny)" in table
    assert "not run" in (results / "tables/table1.md").read_text()  # the other backbones did not run here
    observer = (results / "tables/inter_observer.md").read_text()
    assert "senior vs junior" in observer
    _run("plots", "--results", results, "--prepared", prepared, env=env)
    pngs = sorted(x.name for x in (results / "plots").glob("*.png"))
    assert {"ewc_weight.png", "isbi2015_overlays.png", "isbi2015_per_landmark_mre.png", "isbi2015_sdr_curve.png",
            "table3_ours_vs_paper.png"} <= set(pngs)
    assert "training_curves.png" not in pngs  # one epoch logged once: no curve, so no empty panel
