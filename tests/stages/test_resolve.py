"""The resolve stage: each run's train and evaluate stages depend on a file holding only the values they read,
so `dvc exp run -S ...` re-runs exactly the stages whose own values changed."""

from __future__ import annotations

import json

import pytest
import yaml

from farnet.config import load_params, params_from_stage, stage_params
from farnet.core.errors import ConfigError
from farnet.stages.resolve import resolve
from helpers import committed_params


def resolved(tmp_path, name, raw):
    params = tmp_path / f"{name}.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / name
    resolve(params, out)
    return {str(p.relative_to(out)): p.read_text() for p in out.rglob("*.json")}


def changed(before, after):
    assert set(before) == set(after)
    return sorted(k for k in before if before[k] != after[k])


@pytest.fixture(scope="module")
def quick():
    raw = committed_params()
    raw["profile"] = "quick"
    return raw


@pytest.fixture(scope="module")
def baseline(quick, tmp_path_factory):
    return resolved(tmp_path_factory.mktemp("base"), "base", quick)


def test_every_run_and_dataset_has_its_files(baseline, quick):
    runs = set(quick["runs"])
    assert {k for k in baseline if k.endswith("/train.json")} == {f"{r}/train.json" for r in runs}
    assert {k for k in baseline if k.endswith("/evaluate.json")} == {f"{r}/evaluate.json" for r in runs}
    assert {k for k in baseline if k.startswith("datasets/")} == {f"datasets/{d}.json" for d in quick["datasets"]}


def test_a_run_file_holds_only_what_the_run_reads(baseline):
    l2 = json.loads(baseline["msfa_fr/train.json"])
    assert l2["loss"] == {"name": "l2"} and "runs" not in l2 and set(l2["datasets"]) == {"isbi2015"}
    unet = json.loads(baseline["unet/train.json"])
    assert unet["model"] == {"architecture": "unet"}
    aw = json.loads(baseline["msfa_fr_aw/train.json"])
    assert set(aw["loss"]) == {"name", "awing_omega", "awing_theta", "awing_epsilon", "awing_alpha"}
    ewc = json.loads(baseline["farnet/train.json"])
    assert ewc["loss"] == {"name": "ewc", "alpha": 40.0} and ewc["eval"] == {"select": "last"}
    assert "fr_input_kernel" not in json.loads(baseline["vgg16/train.json"])["model"]  # VGG's C0 replaces it
    evaluation = json.loads(baseline["hand_fold2/evaluate.json"])
    assert evaluation["data"] == {"dataset": "hand_dha", "fold": 2} and evaluation["eval"]["sdr_radii_mm"] == [2, 4, 10]
    assert "loss" not in evaluation and "model" not in evaluation


def test_loss_alpha_changes_exactly_the_ewc_runs(quick, baseline, tmp_path):
    raw = json.loads(json.dumps(quick))
    raw["loss"]["alpha"] = 20.0
    after = resolved(tmp_path, "alpha", raw)
    ewc_runs = [r for r in quick["runs"] if quick["runs"][r].get("loss", {}).get("name", "ewc") == "ewc"]
    assert changed(baseline, after) == sorted(f"{r}/train.json" for r in ewc_runs)
    assert "msfa_fr/train.json" not in changed(baseline, after) and "unet/train.json" not in changed(baseline, after)


def test_a_run_override_changes_that_run_alone(quick, baseline, tmp_path):
    raw = json.loads(json.dumps(quick))
    raw["runs"]["farnet"]["loss"] = {"alpha": 20.0}
    assert changed(baseline, resolved(tmp_path, "one", raw)) == ["farnet/train.json"]


def test_evaluation_settings_change_only_the_evaluate_files(quick, baseline, tmp_path):
    raw = json.loads(json.dumps(quick))
    raw["profiles"]["quick"]["eval"]["batch_size"] = 2
    after = changed(baseline, resolved(tmp_path, "eval", raw))
    assert after and all(k.endswith("/evaluate.json") for k in after)


def test_stage_files_rebuild_the_stage_parameters(baseline, quick, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(quick))
    for run in ("farnet", "msfa_fr", "unet", "spine_fold3"):
        full = load_params(path, run=run)
        rebuilt = params_from_stage(json.loads(baseline[f"{run}/train.json"]))
        assert (rebuilt.run, rebuilt.model, rebuilt.train, rebuilt.data, rebuilt.seed) == (
            full.run, rebuilt.model, full.train, full.data, full.seed)
        assert rebuilt.loss.name == full.loss.name and rebuilt.input_hw == full.input_hw
        if full.loss.name == "ewc":
            assert rebuilt.loss == full.loss
        assert rebuilt.model.architecture == full.model.architecture
    with pytest.raises(ValueError, match="stage 'plots' is not one of"):
        stage_params(load_params(path, run="farnet"), "plots")


def test_a_fold_the_dataset_does_not_have_is_refused_before_anything_runs(quick, tmp_path):
    raw = json.loads(json.dumps(quick))
    raw["runs"]["hand_fold1"]["data"]["fold"] = 7
    with pytest.raises(ConfigError, match=r"runs\.hand_fold1: data\.fold: 7 is not a fold of hand_dha \(folds: 1\.\.3\)"):
        resolved(tmp_path, "fold", raw)


def test_files_of_removed_runs_are_deleted(quick, tmp_path):
    raw = json.loads(json.dumps(quick))
    resolved(tmp_path, "same", raw)
    del raw["runs"]["vgg19"], raw["profiles"]["quick"]["runs"]["vgg19"]
    after = resolved(tmp_path, "same", raw)
    assert not any(k.startswith("vgg19/") for k in after) and not (tmp_path / "same" / "vgg19").exists()


def test_switching_to_the_cpu_profile_changes_the_farnet_run_alone(quick, baseline, tmp_path):
    raw = json.loads(json.dumps(quick))
    raw["profile"] = "cpu"  # cpu extends quick and overrides runs.farnet only
    after = resolved(tmp_path, "cpu", raw)
    assert changed(baseline, after) == ["farnet/evaluate.json", "farnet/train.json"]  # prepare and other runs stay
    assert json.loads(after["farnet/train.json"])["profile"] == "cpu"
    assert json.loads(after["vgg16/train.json"])["profile"] == "quick"  # labelled by the profile it comes from
    assert json.loads(after["datasets/isbi2015.json"])["profile"] == "quick"


def test_switching_from_cpu_to_study_changes_only_what_the_study_adds(quick, tmp_path):
    """On a finished cpu experiment the study re-trains Table 2's rows, FARNet's seeds and spine fold 1 alone:
    every other file, two profiles up the chain included, stays byte for byte."""
    cpu = resolved(tmp_path, "cpu", {**json.loads(json.dumps(quick)), "profile": "cpu"})
    study = resolved(tmp_path, "study", {**json.loads(json.dumps(quick)), "profile": "study"})
    added = ("unet", "fpn", "msfa_add", "msfa", "msfa_fr_naive", "msfa_fr", "msfa_fr_aw", "farnet_seed1",
             "farnet_seed2", "farnet_seed3", "spine_fold1")
    # the ISBI rows are evaluated at another size; spine fold 1 alike (its evaluation follows its new model)
    assert changed(cpu, study) == sorted([*(f"{run}/{stage}.json" for run in added[:-1] for stage in ("evaluate", "train")),
                                          "spine_fold1/train.json"])
    assert json.loads(study["vgg16/train.json"])["profile"] == "quick"  # two profiles up: still the quick run
    assert json.loads(study["farnet/train.json"])["profile"] == "cpu"
    assert json.loads(study["unet/train.json"])["profile"] == "study"


def test_a_profile_that_changes_every_run_labels_every_run(quick, tmp_path):
    raw = json.loads(json.dumps(quick))
    raw["profiles"]["slow"] = {"extends": "quick", "train": {"lr": 5.0e-4}}
    raw["profile"] = "slow"
    after = resolved(tmp_path, "slow", raw)
    labels = {json.loads(text)["profile"] for name, text in after.items() if name.endswith("/train.json")}
    assert labels == {"slow"}
    assert json.loads(after["datasets/isbi2015.json"])["profile"] == "quick"  # its data are quick's


def _git_project(tmp_path, raw: dict):
    import subprocess

    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for args in (["init", "-q"], ["add", "params.yaml"],
                 ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "params"]):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True)
    return tmp_path / "params.yaml"


def test_an_edit_the_profile_undoes_is_refused_naming_both(tmp_path):
    """`dvc exp run -S profile=quick -S train.epochs=5` ran 1 epoch (the profile's) and recorded 5."""
    import yaml

    from farnet.core.errors import ConfigError
    from farnet.stages.resolve import resolve

    raw = committed_params()
    raw["profile"] = "quick"
    path = _git_project(tmp_path, raw)
    edited = {**raw, "train": {**raw["train"], "epochs": 5}}
    path.write_text(yaml.safe_dump(edited))
    with pytest.raises(ConfigError, match=r"under profile 'quick', train\.epochs: 5 is overridden by "
                                          r"profiles\.quick\.train\.epochs: 1"):
        resolve(path, tmp_path / "resolved")
    edited["runs"] = {**raw["runs"], "vgg16": {**raw["runs"]["vgg16"], "train": {"epochs": 7}}}
    edited["runs"]["unet"] = {**raw["runs"]["unet"], "data": {"train_limit": 10}}
    edited["train"]["epochs"] = raw["train"]["epochs"]
    path.write_text(yaml.safe_dump(edited))
    with pytest.raises(ConfigError, match=r"runs\.unet\.data\.train_limit: 10 is overridden by profiles\.quick\."
                                          r"run_defaults\.isbi2015\.data\.train_limit: 40; runs\.vgg16\.train\.epochs: 7 "
                                          r"is overridden by profiles\.quick\.runs\.vgg16\.train\.epochs: 1"):
        resolve(path, tmp_path / "resolved")
    study = {**raw, "profile": "study", "runs": {**raw["runs"], "fpn": {**raw["runs"]["fpn"], "train": {"lr": 0.01}}}}
    path.write_text(yaml.safe_dump(study))  # the cpu recipe that trained_like gives the row sets it again
    with pytest.raises(ConfigError, match=r"runs\.fpn\.train\.lr: 0\.01 is overridden by profiles\.cpu\.runs\.farnet"
                                          r"\.train\.lr: 0\.001 \(trained_like\)"):
        resolve(path, tmp_path / "resolved")
    study["runs"]["fpn"] = {**raw["runs"]["fpn"], "train": {"epochs": 2}}
    path.write_text(yaml.safe_dump(study))  # and the study's own schedule for the rows
    cpu_epochs = raw["profiles"]["cpu"]["runs"]["farnet"]["train"]["epochs"]
    study_epochs = raw["profiles"]["study"]["trained_like"]["farnet"]["with"]["train"]["epochs"]
    with pytest.raises(ConfigError, match=rf"runs\.fpn\.train\.epochs: 2 is overridden by profiles\.cpu\.runs\.farnet"
                                          rf"\.train\.epochs: {cpu_epochs} \(trained_like\); runs\.fpn\.train\.epochs: 2 "
                                          rf"is overridden by profiles\.study\.trained_like\.farnet\.with\.train\.epochs: "
                                          rf"{study_epochs}"):
        resolve(path, tmp_path / "resolved")
    edited = {**raw, "loss": {**raw["loss"], "alpha": 20.0}}  # not set by the profile: the user's value runs
    path.write_text(yaml.safe_dump(edited))
    assert resolve(path, tmp_path / "resolved")
    path.write_text(yaml.safe_dump({**raw, "profile": "paper", "train": {**raw["train"], "epochs": 5}}))
    assert resolve(path, tmp_path / "resolved")  # the paper profile overrides nothing
