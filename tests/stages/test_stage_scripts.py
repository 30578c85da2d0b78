"""The stage scripts (``pipelines/*.py``) report the project's own errors as ``farnet`` does: one line naming the
file and key, a non-zero status, no traceback unless ``FARNET_DEBUG`` asks for one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from farnet.core.errors import ConfigError, DataError, TrainingInterrupted, run_command
from helpers import ROOT, committed_params_text, write_committed_params


def _stage(script, *args, **env):
    return subprocess.run([sys.executable, f"pipelines/{script}.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "FARNET_TUNE_MALLOC": "0", **env})


@pytest.fixture
def bad_params(tmp_path):
    """The committed params with `loss.alpha: .inf`."""
    path = tmp_path / "params.yaml"
    text, n = re.subn(r"(?m)^  alpha: 40\.0", "  alpha: .inf", committed_params_text())
    assert n == 1
    path.write_text(text)
    return path


def test_a_config_error_is_one_line_without_a_traceback(bad_params, tmp_path):
    result = _stage("resolve", "--params", bad_params, "--out", tmp_path / "resolved")
    assert result.returncode == 2
    assert result.stderr == f"resolve: error: {bad_params}: loss.alpha: inf must be a finite number\n"
    assert not (tmp_path / "resolved").exists()


def test_farnet_debug_shows_the_traceback(bad_params, tmp_path):
    result = _stage("resolve", "--params", bad_params, "--out", tmp_path / "resolved", FARNET_DEBUG="1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError: " in result.stderr


def test_an_unknown_dataset_is_a_config_error(tmp_path):
    params = write_committed_params(tmp_path)
    result = _stage("fetch", "--params", params, "--dataset", "mnist", "--raw", tmp_path / "raw")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"fetch: error: {params}: --dataset 'mnist' has no entry under datasets")


@pytest.mark.parametrize("script", sorted(p.stem for p in (ROOT / "pipelines").glob("*.py") if p.stem != "_common"))
def test_every_stage_script_runs_through_run_stage(script):
    source = (ROOT / "pipelines" / f"{script}.py").read_text()
    assert "sys.exit(run_stage(main))" in source and "sys.exit(main())" not in source


def test_run_command_status_and_message(capsys, monkeypatch):
    monkeypatch.delenv("FARNET_DEBUG", raising=False)

    def fail(exc):
        def main():
            raise exc
        return main

    assert run_command("x", lambda: None) == 0 and run_command("x", lambda: 3) == 3
    assert run_command("x", fail(ConfigError("params.yaml: seed: -1 must be in [0, 2**32 - 1]"))) == 2
    assert capsys.readouterr().err == "x: error: params.yaml: seed: -1 must be in [0, 2**32 - 1]\n"
    assert run_command("x", fail(DataError("a.txt", "not a number", line=3))) == 2
    assert capsys.readouterr().err == "x: error: a.txt:3: not a number\n"
    assert run_command("x", fail(TrainingInterrupted("stopped", 15))) == 143
    with pytest.raises(ValueError):  # not the project's own: a bug, with its traceback
        run_command("x", fail(ValueError("bug")))
    monkeypatch.setenv("FARNET_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_command("x", fail(ConfigError("k: bad")))


def test_a_setting_the_run_cannot_use_names_the_params_file_given(tmp_path):
    """`eval.select: best_test1` on a dataset without Test1 is named in the --params file, not params.yaml."""
    path = tmp_path / "elsewhere.yaml"
    path.write_text(committed_params_text().replace(
        "  hand_fold1: {dataset: hand_dha, data: {fold: 1}, eval: {",
        "  hand_fold1: {dataset: hand_dha, data: {fold: 1}, eval: {select: best_test1, ", 1))
    assert "select: best_test1" in path.read_text()
    result = _stage("train", "hand_fold1", "--params", path, "--prepared", tmp_path / "none", "--models",
                    tmp_path / "models", "--train-logs", tmp_path / "logs")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"train: error: {path}: eval.select: best_test1 needs a Test1 split, which "
                                    "hand_dha has not")
