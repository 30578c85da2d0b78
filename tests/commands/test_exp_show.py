"""`farnet exp-show` (what `make exp-show` prints) on a tiny DVC experiment: the headline numbers with their
intervals and only the parameters that differ, not every run's metrics."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from farnet.commands import exp_show
from farnet.cli import main

BIN = Path(sys.executable).parent
STAGE = """\
import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
os.makedirs("results/metrics", exist_ok=True)
mre = 1.5 + p["loss"]["alpha"] / 100
json.dump({"farnet_test1_mre_mm": mre, "farnet_test1_mre_mm_low": mre - 0.1, "farnet_test1_mre_mm_high": mre + 0.1,
           "farnet_test1_sdr_2mm": 80.0, "table2_test1_mre_mm": {"UNet": 3.0}}, open("results/summary.json", "w"))
for run in ("farnet", "unet", "msfa"):  # every run's per-split metrics, as the evaluate stages write them
    json.dump({s: {"mre_mm": mre, "sd_mm": 1.0, "sdr": {"2.0": 80.0, "4.0": 95.0}} for s in ("test1", "test2")},
              open(f"results/metrics/{run}.json", "w"))
"""


def _sh(*args, cwd, env):
    done = subprocess.run(list(map(str, args)), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_exp_show_shows_the_headline_with_its_interval_and_the_changed_params(tmp_path, monkeypatch, capsys):
    if shutil.which("git") is None or not (BIN / "dvc").exists():
        pytest.skip("git and dvc are needed")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    (tmp_path / "params.yaml").write_text("profile: quick\nloss: {alpha: 40}\ntrain: {lr: 0.001, epochs: 2}\n")
    (tmp_path / "stage.py").write_text(STAGE)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  run:\n    cmd: python stage.py\n    deps: [stage.py]\n    params: [loss, train, profile]\n"
        "    metrics:\n      - results/summary.json: {cache: false}\n      - results/metrics: {cache: false}\n")
    _sh("git", "init", "-q", cwd=tmp_path, env=env)
    _sh("dvc", "init", "-q", cwd=tmp_path, env=env)
    _sh("git", "add", "-A", cwd=tmp_path, env=env)
    _sh("git", "commit", "-qm", "tiny", cwd=tmp_path, env=env)
    _sh("dvc", "exp", "run", "-q", "--name", "base", cwd=tmp_path, env=env)
    _sh("dvc", "exp", "run", "-q", "-S", "loss.alpha=20", "--name", "alpha20", cwd=tmp_path, env=env)
    document = json.loads(_sh("dvc", "exp", "show", "--json", cwd=tmp_path, env=env))
    rows = exp_show.experiment_rows(document)
    assert exp_show.columns(rows) == ["Experiment", "Test1 MRE [95% CI]", "Test1 SDR@2mm", "params.loss.alpha"]
    assert len(exp_show.columns(rows, all_params=True)) == 7  # + profile, train.lr, train.epochs
    dump = tmp_path / "exp.json"
    dump.write_text(json.dumps(document))
    assert main(["exp-show", "--json", str(dump)]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["Experiment", "Test1 MRE [95% CI]",
                                                                 "Test1 SDR@2mm", "loss.alpha"]
    assert "1.70 [1.60–1.80]" in printed and "1.90 [1.80–2.00]" in printed  # alpha 20 and alpha 40
    assert "└ alpha20" in printed and "test2" not in printed and "mre_mm" not in printed
    assert max(len(line) for line in printed.splitlines()) < 120  # fits a terminal
