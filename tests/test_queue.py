"""Parallel experiments through DVC's queue, as the README shows them, on a throwaway copy of the project."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _sh(*args, cwd, env, timeout=300):
    result = subprocess.run(list(map(str, args)), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.mirror
@pytest.mark.slow
def test_queued_experiments_run_in_parallel(mirror_root, tmp_path):
    if shutil.which("git") is None or not (BIN / "dvc").exists():
        pytest.skip("git and dvc are needed for the queue test")
    repo = tmp_path / "project"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        # results/gpu/ holds the committed placeholder that the tables stage's dependency needs
        if (ROOT / name).is_file() and (not name.startswith(("results/", "tests/")) and name != "dvc.lock"
                                        or name.startswith("results/gpu/")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["datasets"] = {"isbi2015": params["datasets"]["isbi2015"]}
    params["runs"] = {"farnet": params["runs"]["farnet"]}
    params["profiles"] = {}  # the other profiles name runs this copy does not have
    params["profiles"]["tiny"] = {"datasets": {"isbi2015": {"input_hw": [64, 64]}}, "data": {"train_limit": 2},
                                  "heatmap": {"sigma_px": 1.5}, "train": {"epochs": 1, "lr_milestones": []},
                                  "eval": {"batch_size": 32}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "FARNET_DATA_MIRROR": str(mirror_root), "FARNET_DEVICE": "cpu",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "PYTHONPATH": str(repo)}
    _sh("git", "init", "-q", cwd=repo, env=env)
    if not (repo / ".dvc").is_dir():
        _sh("dvc", "init", "-q", cwd=repo, env=env)
    _sh("git", "add", "-A", cwd=repo, env=env)
    _sh("git", "commit", "-qm", "tiny project", cwd=repo, env=env)

    # the README's example: queue two values of alpha, run them two at a time
    _sh("dvc", "exp", "run", "--queue", "-S", "loss.alpha=20", "--name", "alpha20", cwd=repo, env=env)
    _sh("dvc", "exp", "run", "--queue", "-S", "loss.alpha=30", "--name", "alpha30", cwd=repo, env=env)
    _sh("dvc", "queue", "start", "-j", "2", cwd=repo, env=env)
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        status = _sh("dvc", "queue", "status", cwd=repo, env=env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    else:
        pytest.fail(f"queued experiments did not finish in time:\n{status}")
    _sh("dvc", "queue", "stop", cwd=repo, env=env)
    assert status.count("Success") == 2, status
    shown = json.loads(_sh("dvc", "exp", "show", "--json", cwd=repo, env=env))
    experiments = {}
    for rev in shown:
        for exp in rev.get("experiments") or []:
            for r in exp["revs"]:
                data = r.get("data") or {}
                alpha = data["params"]["params.yaml"]["data"]["loss"]["alpha"]
                metrics = data["metrics"]["results/metrics/farnet.json"]["data"]
                experiments[r["name"]] = (alpha, metrics["test1"]["mre_mm"])
    assert {name: a for name, (a, _) in experiments.items()} == {"alpha20": 20, "alpha30": 30}
    assert all(mre > 0 for _, mre in experiments.values())
