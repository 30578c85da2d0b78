"""The `cpu` profile: what it resolves to, and its machinery (per-step loss, Test1/Test2 monitored during
training, resume after an interruption) run through the real train stage on the mirror's ISBI images at a tiny
size (its guided-decoder columns: tests/test_pipeline.py)."""

from __future__ import annotations

import copy
import os
import signal

import pandas as pd
import pytest

from farnet.training import steps
from farnet.config import load_params, params_from_dict
from farnet.core.errors import ConfigError, TrainingInterrupted
from helpers import committed_params


def _resolved(profile: str, run: str):
    raw = committed_params()
    raw["profile"] = profile
    return params_from_dict(raw, run)


def test_cpu_profile_is_quick_with_a_longer_farnet_run():
    cpu, quick = _resolved("cpu", "farnet"), _resolved("quick", "farnet")
    assert cpu.dataset.input_hw == quick.dataset.input_hw == quick.input_hw == (320, 256)  # no second cache...
    assert cpu.input_hw == (256, 192)  # ...the cpu run reads it resized (docs/cpu-profile.md)
    assert cpu.train.lr_schedule == "cosine" and cpu.train.epochs > 10 and cpu.train.monitor_every > 0
    assert cpu.train.log_every_steps > 0 and cpu.eval.select == "last"  # the monitor never chooses the model
    for run in committed_params()["runs"]:  # every other run keeps its quick settings exactly
        if run != "farnet":
            assert _resolved("cpu", run).train == _resolved("quick", run).train, run
            assert _resolved("cpu", run).data == _resolved("quick", run).data, run


TABLE2_AND_SEEDS = ("unet", "fpn", "msfa_add", "msfa", "msfa_fr_naive", "msfa_fr", "msfa_fr_aw",
                    "farnet_seed1", "farnet_seed2", "farnet_seed3")


def test_study_profile_trains_table2_and_the_seeds_like_the_cpu_farnet_run():
    """Each Table 2 row and FARNet seed: the cpu recipe of `farnet` on all 150 images at its size, with only the
    row's own model, loss or seed and the study's schedule differing; the rest stays as under cpu."""
    cpu = _resolved("cpu", "farnet")
    schedule = ("epochs", "monitor_every")
    for run in TABLE2_AND_SEEDS:
        study, quick = _resolved("study", run), _resolved("quick", run)
        assert study.input_hw == cpu.input_hw and study.data.train_limit is None, run
        assert study.dataset == cpu.dataset and study.heatmap == cpu.heatmap, run
        assert {k: v for k, v in vars(study.train).items() if k not in schedule} == \
            {k: v for k, v in vars(cpu.train).items() if k not in schedule}, run
        assert (study.model, study.loss, study.seed) == (quick.model, quick.loss, quick.seed), run  # the row's own
        assert study.train.epochs == _resolved("study", "unet").train.epochs < cpu.train.epochs
    farnet = _resolved("study", "farnet")
    assert (farnet.input_hw, farnet.data, farnet.dataset, farnet.train) == (cpu.input_hw, cpu.data, cpu.dataset, cpu.train)
    for run in committed_params()["runs"]:
        if run not in (*TABLE2_AND_SEEDS, "farnet", "spine_fold1"):  # Table 1, the hand, spine folds 2-5
            assert _resolved("study", run).train == _resolved("cpu", run).train, run
            assert _resolved("study", run).data == _resolved("cpu", run).data, run
    spine = _resolved("study", "spine_fold1")
    assert spine.data.train_limit is None and spine.train.epochs > 1 and spine.train.lr_schedule == "cosine"


def test_trained_like_copies_the_recipe_from_one_home_and_is_checked():
    raw = committed_params()
    raw["profile"] = "study"
    raw["profiles"]["cpu"]["runs"]["farnet"]["train"]["lr"] = 3e-4  # the cpu recipe changes...
    assert params_from_dict(raw, "msfa_fr").train.lr == 3e-4  # ...and Table 2's rows with it
    raw["profiles"]["study"]["runs"] = {"msfa_fr": {"train": {"lr": 5e-4}}}  # a row's own entry comes last
    assert params_from_dict(raw, "msfa_fr").train.lr == 5e-4 and params_from_dict(raw, "unet").train.lr == 3e-4
    for like, message in (({"nope": {"runs": ["unet"]}}, "run 'nope' is not defined"),
                          ({"farnet": {"runs": "unet"}}, "must be a list of runs"),
                          ({"farnet": {"runs": ["hand_fold1"]}}, "trains on 'hand_dha', not 'isbi2015'"),
                          ({"farnet": ["unet"]}, "expected {runs"),
                          (["farnet"], "expected a mapping")):
        bad = copy.deepcopy(raw)
        bad["profiles"]["study"]["trained_like"] = like
        with pytest.raises(ConfigError, match=message):
            params_from_dict(bad, "unet")


def test_profiles_extend_and_refuse_cycles():
    raw = {"profile": "b", "train": {"lr": 0.1}, "runs": {},
           "profiles": {"a": {"train": {"lr": 0.2, "epochs": 3}}, "b": {"extends": "a", "train": {"lr": 0.4}}}}
    p = params_from_dict(raw)
    assert (p.train.lr, p.train.epochs) == (0.4, 3)
    cyclic = copy.deepcopy(raw)
    cyclic["profiles"]["a"]["extends"] = "b"
    with pytest.raises(ConfigError, match="cycle of profiles"):
        params_from_dict(cyclic)
    missing = copy.deepcopy(raw)
    missing["profiles"]["b"]["extends"] = "nope"
    with pytest.raises(ConfigError, match="'nope' is not defined under profiles"):
        params_from_dict(missing)


@pytest.mark.mirror
@pytest.mark.slow
def test_cpu_machinery_at_a_tiny_size(mirror_root, tmp_path, monkeypatch):
    import yaml

    from farnet.stages.fetch import fetch
    from farnet.stages.prepare import prepare
    from farnet.stages.train import train_run

    raw = committed_params()
    raw["profile"] = "tiny"
    raw["profiles"]["tiny"] = {"extends": "cpu", "datasets": {"isbi2015": {"input_hw": [64, 64]}},
                               "runs": {"farnet": {"data": {"train_limit": 4, "input_hw": None},
                                                   "heatmap": {"sigma_px": 1.0},
                                                   "train": {"epochs": 3, "log_every_steps": 2, "monitor_every": 2,
                                                             "warmup_steps": 2},
                                                   "eval": {"batch_size": 50}}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path, run="farnet")
    assert params.dataset.augment == "payer" and params.train.lr_schedule == "cosine"
    monkeypatch.setenv("FARNET_DATA_MIRROR", str(mirror_root))
    monkeypatch.setenv("FARNET_DEVICE", "cpu")
    fetch(params, "isbi2015", tmp_path / "raw")
    prepare(params, "isbi2015", tmp_path / "raw", tmp_path / "prepared")
    models, logs = tmp_path / "models" / "farnet", tmp_path / "train" / "farnet"

    real_step = steps.train_step
    calls = []

    def interrupted_at_step_5(*args, **kwargs):  # SIGTERM during step 5 of 12 (epoch 2): the engine stops after it
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(steps, "train_step", interrupted_at_step_5)
    with pytest.raises(TrainingInterrupted):
        train_run(params, tmp_path / "prepared", models, logs, progress=False)
    monkeypatch.setattr(steps, "train_step", real_step)
    info = train_run(params, tmp_path / "prepared", models, logs, progress=False)

    assert (info["resumed_from_epoch"], info["resumed_from_step"], info["steps"]) == (1, 5, 12)
    curves = logs / "plots" / "metrics"
    loss = pd.read_csv(curves / "train" / "loss.tsv", sep="\t")
    assert loss["step"].tolist() == [2, 4, 6, 8, 10, 12]  # every 2 steps; the window restarts after the resume
    for split in ("test1", "test2"):
        mre = pd.read_csv(curves / split / "mre_mm.tsv", sep="\t")
        assert mre["step"].tolist() == [8, 12]  # after epochs 2 and 3 (the last)
        assert (mre["mre_mm"] > 0).all()
    assert [m["epoch"] for m in info["monitor"]] == [2, 3]
    assert set(info["monitor"][0]) == {"epoch", "test1/mre_mm", "test1/outliers_pct", "test2/mre_mm",
                                       "test2/outliers_pct", "heldout/mre_mm", "heldout/outliers_pct"}
    assert (logs / "plots" / "metrics" / "heldout" / "mre_mm.tsv").is_file()  # the 146 images it never trained on

