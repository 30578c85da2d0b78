import time

import pytest
import yaml

from farnet.config import Params, check_every_run, effective_dict, load_params, params_from_dict
from farnet.core.errors import ConfigError
from helpers import committed_params, committed_params_text, write_committed_params


def write(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_project_params_load_as_the_paper_protocol(tmp_path):
    p = load_params(write_committed_params(tmp_path))
    assert p.profile == "paper"
    assert p.input_hw == (800, 640) and p.data.dataset == "isbi2015" and p.run is None
    assert p.datasets["hand_dha"].input_hw == (512, 512) and p.datasets["spine_boostnet"].input_hw == (1024, 512)
    assert p.heatmap.sigma_px == 10.0
    assert p.loss.name == "ewc" and p.loss.alpha == 40.0
    assert p.train.epochs == 300 and p.train.batch_size == 1 and p.train.lr == 1e-4
    assert p.model.backbone == "densenet121" and p.model.pretrained == "none"


def test_quick_profile_merges_over_the_base():
    raw = committed_params()
    raw["profile"] = "quick"
    p = params_from_dict(raw)
    assert p.input_hw == (320, 256)
    assert p.train.epochs == 1 and p.train.lr == 1e-3
    assert p.loss.alpha == 40.0  # not overridden: `dvc exp run -S loss.alpha=20` stays effective
    raw["loss"] = {"name": "ewc", "alpha": 20}
    assert params_from_dict(raw).loss.alpha == 20.0


def test_defaults_and_frozen():
    p = params_from_dict({})
    assert p == Params()
    with pytest.raises(AttributeError):
        p.seed = 3  # type: ignore[misc]
    assert effective_dict(p)["datasets"]["isbi2015"]["input_hw"] == [800, 640]


def test_runs_override_the_base_and_the_profile():
    raw = committed_params()
    vgg = params_from_dict(raw, run="vgg16")
    assert vgg.run == "vgg16" and vgg.model.backbone == "vgg16" and vgg.train.epochs == 900
    assert vgg.loss.alpha == 40.0 and vgg.input_hw == (800, 640) and vgg.train.lr == 1e-4
    hand = params_from_dict(raw, run="hand_fold2")
    assert hand.data.dataset == "hand_dha" and hand.data.fold == 2 and hand.input_hw == (512, 512)
    assert hand.dataset.augment == "payer" and hand.eval.sdr_radii_mm == (2.0, 4.0, 10.0)
    raw["profile"] = "quick"
    quick_vgg = params_from_dict(raw, run="vgg16")
    assert quick_vgg.input_hw == (160, 128) and quick_vgg.train.epochs == 1 and quick_vgg.train.precision == "auto"
    assert params_from_dict(raw, run="farnet").input_hw == (320, 256)
    assert params_from_dict(raw, run="spine_fold3").input_hw == (256, 128)


@pytest.mark.parametrize("runs, run, match", [
    ({"a": {"model": {}}}, None, r"runs\.a: expected a mapping with a `dataset` key"),
    ({"a": {"dataset": "isbi2015"}}, "b", r"run 'b' is not defined under runs"),
    ({"a": {"dataset": "isbi2015", "profile": "x"}}, "a", r"runs\.a: may not override"),
    ({"a": {"dataset": "isbi2015", "model": {"depth": 3}}}, "a", r"model\.depth: unknown key"),
    ({"a": {"dataset": "mnist"}}, "a", r"data\.dataset: 'mnist' is not one of"),
    ({"a": {"dataset": "hand_dha"}}, "a", r"data\.dataset: 'hand_dha' has no entry under datasets"),
])
def test_bad_runs(runs, run, match):
    with pytest.raises(ConfigError, match=match):
        params_from_dict({"runs": runs}, run=run)


@pytest.mark.parametrize("data, match", [
    ({"loss": {"alfa": 20}}, r"loss\.alfa: unknown key"),
    ({"bogus": 1}, r"bogus: unknown key"),
    ({"train": {"epochs": "many"}}, r"train\.epochs: expected an integer"),
    ({"train": {"epochs": 2.5}}, r"train\.epochs: expected an integer"),
    ({"train": {"channels_last": "yes"}}, r"train\.channels_last: expected true or false"),
    ({"loss": {"alpha": "forty"}}, r"loss\.alpha: expected a number"),
    ({"model": {"backbone": "resnet50"}}, r"model\.backbone: 'resnet50' is not one of"),
    ({"data": {"input_hw": [800]}}, r"data\.input_hw: expected 2 values"),
    ({"datasets": {"isbi2015": {"input_hw": [800, 630]}}}, r"datasets\.isbi2015\.input_hw: .* multiples of 32"),
    ({"datasets": {"isbi2015": {"augment": "mixup"}}}, r"datasets\.isbi2015\.augment: 'mixup' is not one of"),
    ({"datasets": ["isbi2015"]}, r"datasets: expected a mapping"),
    ({"data": {"input_hw": [800, 600]}}, r"data\.input_hw: .* multiples of 32"),
    ({"data": "isbi"}, r"data: expected a mapping"),
    ({"loss": {"alpha": 0.5}}, r"loss\.alpha: 0\.5 must be >= 1"),
    ({"train": {"epochs": 0}}, r"train\.epochs: 0 must be > 0"),
    ({"profile": "tiny"}, r"profile: 'tiny' is not defined"),
    ({"profile": "q", "profiles": {"q": {"train": {"epoch": 1}}}}, r"train\.epoch: unknown key"),
])
def test_bad_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        params_from_dict(data)


@pytest.mark.parametrize("run, match", [
    # batch norm at the coarsest level over 2 values per image: the gradients explode (1e10 in bf16)
    ({"data": {"input_hw": [64, 32]}}, r"data\.input_hw: \[64, 32\] gives a 2x1 map at stride 32: batch norm"),
    ({"data": {"input_hw": [32, 32]}}, r"gives a 1x1 map at stride 32"),
    ({"data": {"input_hw": [40, 64]}, "model": {"backbone": "vgg16"}}, r"multiples of 16 \(the coarsest stride of farnet on vgg16\)"),
    ({"data": {"input_hw": [72, 64]}, "model": {"architecture": "unet"}}, r"multiples of 16 \(the coarsest stride of unet\)"),
])
def test_a_run_refuses_an_input_its_network_cannot_train_at(run, match):
    with pytest.raises(ConfigError, match=match):
        params_from_dict({"runs": {"r": {"dataset": "isbi2015", **run}}}, run="r")


@pytest.mark.parametrize("run, input_hw", [
    ({"data": {"input_hw": [64, 64]}}, (64, 64)),  # 2x2 at stride 32: the smallest DenseNet size
    ({"data": {"input_hw": [128, 32]}}, (128, 32)),  # 4x1
    ({"data": {"input_hw": [32, 48]}, "model": {"backbone": "vgg16"}}, (32, 48)),  # VGG: stride 16, 2x3
])
def test_a_run_accepts_the_smallest_sizes_it_can_train_at(run, input_hw):
    assert params_from_dict({"runs": {"r": {"dataset": "isbi2015", **run}}}, run="r").input_hw == input_hw


def test_load_params_names_the_file(tmp_path):
    path = write(tmp_path, {"train": {"optimizer": "sgd"}})
    with pytest.raises(ConfigError, match=r"params\.yaml: train\.optimizer: 'sgd' is not one of"):
        load_params(path)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(tmp_path / "list.yaml")


# ---- values that cannot be right: each numeric key finite and in range, the fold the dataset's, weights known ----

@pytest.mark.parametrize("data, match", [
    ({"train": {"lr_gamma": 0.0}}, r"train\.lr_gamma: 0\.0 must be in \(0, 1\]"),
    ({"train": {"lr_gamma": -0.5}}, r"train\.lr_gamma: -0\.5 must be in \(0, 1\]"),
    ({"train": {"lr_gamma": 10.0}}, r"train\.lr_gamma: 10\.0 must be in \(0, 1\]"),
    ({"train": {"lr": float("inf")}}, r"train\.lr: inf must be a finite number"),
    ({"train": {"lr": float("nan")}}, r"train\.lr: nan must be a finite number"),
    ({"train": {"lr": 5.0}}, r"train\.lr: 5\.0 must be in \(0, 1\]"),
    ({"train": {"lr_milestones": [200, 100]}}, r"train\.lr_milestones: \(200, 100\) must be increasing epochs >= 1"),
    ({"train": {"lr_milestones": [0]}}, r"train\.lr_milestones: \(0,\) must be increasing"),
    ({"heatmap": {"sigma_px": float("inf")}}, r"heatmap\.sigma_px: inf must be a finite number"),
    ({"heatmap": {"sigma_px": 1e-300}}, r"heatmap\.sigma_px: 1e-300 must be in \[0\.5, 100\] px"),
    ({"heatmap": {"sigma_px": 1000}}, r"heatmap\.sigma_px: 1000\.0 must be in \[0\.5, 100\] px"),
    ({"loss": {"alpha": float("inf")}}, r"loss\.alpha: inf must be a finite number"),
    ({"loss": {"awing_omega": -14}}, r"loss\.awing_omega: -14\.0 must be > 0"),
    ({"loss": {"awing_epsilon": 0}}, r"loss\.awing_epsilon: 0\.0 must be > 0"),
    ({"loss": {"awing_theta": 0}}, r"loss\.awing_theta: 0\.0 must be > 0"),
    ({"loss": {"awing_alpha": 1}}, r"loss\.awing_alpha: 1\.0 must be > 1"),
    ({"seed": 10**23}, r"seed: 100000000000000000000000 must be in \[0, 2\*\*32 - 1\]"),
    ({"seed": -1}, r"seed: -1 must be in \[0, 2\*\*32 - 1\]"),
    ({"datasets": {"isbi2015": {"split_seed": 2**32}}}, r"datasets\.isbi2015\.split_seed: 4294967296 must be in"),
    ({"eval": {"sdr_radii_mm": [2.0, float("inf")]}}, r"eval\.sdr_radii_mm\[1\]: inf must be a finite number"),
    ({"data": {"fold": 99}}, r"data\.fold: 99 is not a fold of isbi2015 \(folds: 1\)"),
    ({"model": {"pretrained": "imagent"}}, r"model\.pretrained: 'imagent' is neither none, imagenet nor an existing"),
])
def test_values_that_cannot_be_right_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        params_from_dict(data)


def test_a_run_fold_is_checked_against_its_dataset():
    raw = committed_params()
    raw["runs"]["hand_fold1"]["data"]["fold"] = 99
    with pytest.raises(ConfigError, match=r"data\.fold: 99 is not a fold of hand_dha \(folds: 1\.\.3\)"):
        params_from_dict(raw, run="hand_fold1")
    raw["runs"]["hand_fold1"]["data"]["fold"] = 3
    assert params_from_dict(raw, run="hand_fold1").data.fold == 3


def test_pretrained_is_none_imagenet_or_an_existing_file(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    assert params_from_dict({"model": {"pretrained": str(weights)}}).model.pretrained == str(weights)
    assert params_from_dict({"model": {"pretrained": "imagenet"}}).model.pretrained == "imagenet"
    with pytest.raises(ConfigError, match=r"model\.pretrained: '.*missing\.pth' is neither"):
        params_from_dict({"model": {"pretrained": str(tmp_path / "missing.pth")}})


# ---- every run under every profile, before anything starts -----------------------------------------------------

def test_the_committed_params_hold_for_every_run_under_every_profile():
    raw = committed_params()
    check_every_run(raw)
    for profile in ["paper", *raw["profiles"]]:
        for run in raw["runs"]:
            params_from_dict({**raw, "profile": profile}, run=run)


def test_a_mistake_in_another_run_fails_the_load(tmp_path):
    raw = committed_params()
    raw["runs"]["vgg16"]["model"]["backbone"] = "vgg61"
    path = write(tmp_path, raw)
    assert params_from_dict(raw, run="farnet").run == "farnet"  # the run alone resolves
    with pytest.raises(ConfigError, match=r"params\.yaml: profile 'paper': runs\.vgg16: model\.backbone: 'vgg61' is "
                                          r"not one of"):
        load_params(path, run="farnet")


def test_a_mistake_under_another_profile_fails_the_load(tmp_path):
    raw = committed_params()
    raw["profiles"]["quick"]["runs"]["vgg19"]["train"]["lr"] = float("inf")
    with pytest.raises(ConfigError, match=r"profile 'quick': runs\.vgg19\.train\.lr: inf must be a finite number"):
        load_params(write(tmp_path, raw))
    raw = committed_params()
    raw["profiles"]["quick"]["run_defaults"]["hand_dha"]["heatmap"]["sigma_px"] = float("inf")
    with pytest.raises(ConfigError, match=r"profile 'quick': profiles\.quick\.run_defaults\.hand_dha\.heatmap\."
                                          r"sigma_px: inf must be a finite number"):
        load_params(write(tmp_path, raw))
    raw = committed_params()
    raw["profiles"]["quick"]["train"]["lr_gamma"] = 0.0  # in the profile's base: no run named
    with pytest.raises(ConfigError, match=r"params\.yaml: profile 'quick': train\.lr_gamma: 0\.0 must be in"):
        load_params(write(tmp_path, raw))


# ---- the YAML itself: no duplicate keys, no anchors or aliases -------------------------------------------------

def test_a_key_given_twice_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\nloss:\n  name: ewc\n  alpha: 40.0\n  alpha: 20.0\n")
    with pytest.raises(ConfigError, match=r"params\.yaml:5: loss\.alpha: given twice \(first on line 4\)"):
        load_params(path)
    path.write_text("runs:\n  a: {dataset: isbi2015, seed: 1, seed: 2}\n")
    with pytest.raises(ConfigError, match=r"params\.yaml:2: runs\.a\.seed: given twice \(first on line 2\)"):
        load_params(path)
    path.write_text("loss:\n  alpha: 40.0\nseed: 1\nloss:\n  name: l2\n")
    with pytest.raises(ConfigError, match=r"params\.yaml:4: loss: given twice \(first on line 1\)"):
        load_params(path)


def test_anchors_and_aliases_are_refused_at_once(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("loss: &l {name: l2}\nruns:\n  a: {dataset: isbi2015, loss: *l}\n")
    with pytest.raises(ConfigError, match=r"params\.yaml:1: YAML anchors and aliases .* are not allowed"):
        load_params(path)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]  # "billion laughs": 10**12 values from a few hundred bytes
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 13)]
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"params\.yaml:1: YAML anchors and aliases"):
        load_params(path)
    assert time.perf_counter() - start < 1.0


# ---- params.yaml is the whole truth: every parameter stated, with the default the code has ---------------------

SECTIONS = ("data", "heatmap", "model", "loss", "train", "eval")
# the keys of DatasetParams each committed dataset reads (the others do not apply to it)
DATASET_KEYS = {"isbi2015": {"input_hw", "annotator", "augment"}, "hand_dha": {"input_hw", "augment"},
                "spine_boostnet": {"input_hw", "augment", "split_seed"}}
CUSTOM_ONLY = {"root", "csv", "split_seed"}  # your own data (README); stated in the datasets comment


def test_params_yaml_states_every_parameter_with_its_default():
    raw, defaults = committed_params(), effective_dict(Params())
    assert (raw["profile"], raw["seed"]) == (defaults["profile"], defaults["seed"])
    for section in SECTIONS:
        stated, fields = set(raw[section]), set(defaults[section])
        assert stated == fields, f"{section}: unstated {sorted(fields - stated)}, not fields {sorted(stated - fields)}"
        for key, value in defaults[section].items():
            assert raw[section][key] == value, f"{section}.{key}: params.yaml {raw[section][key]!r}, code {value!r}"


def test_params_yaml_states_every_dataset_key_that_applies():
    raw, text = committed_params(), committed_params_text()
    fields = set(effective_dict(Params())["datasets"]["isbi2015"])
    assert set().union(*DATASET_KEYS.values()) | CUSTOM_ONLY == fields  # a new field must be placed
    assert {name: set(entry) for name, entry in raw["datasets"].items()} == DATASET_KEYS
    isbi = raw["datasets"]["isbi2015"]  # the dataclass's defaults are the ISBI protocol's
    assert all(isbi[key] == effective_dict(Params())["datasets"]["isbi2015"][key] for key in isbi)
    assert all(f"{key}:" in text for key in CUSTOM_ONLY)


# ---- a profile's run_defaults: one override for every run of a dataset ------------------------------------------

def test_quick_run_defaults_reach_every_run_of_their_dataset_but_the_exempt():
    raw = {**committed_params(), "profile": "quick"}
    for run, entry in raw["runs"].items():
        p = params_from_dict(raw, run)
        if entry["dataset"] == "isbi2015" and run != "farnet":
            assert (p.input_hw, p.data.train_limit) == ((160, 128), 40), run
        elif entry["dataset"] == "hand_dha":
            assert (p.heatmap.sigma_px, p.train.epochs, p.data.train_limit) == (5.0, 3, None), run
        elif entry["dataset"] == "spine_boostnet":
            assert (p.input_hw, p.data.train_limit) == ((256, 128), 40), run
    farnet = params_from_dict(raw, "farnet")
    assert (farnet.input_hw, farnet.data.train_limit) == ((320, 256), None)  # exempt


def test_run_defaults_sit_between_the_base_run_and_the_profile_run():
    raw = {"profile": "p", "runs": {"a": {"dataset": "isbi2015", "seed": 1, "train": {"epochs": 9}},
                                    "b": {"dataset": "isbi2015"}, "h": {"dataset": "hand_dha"}},
           "datasets": {"isbi2015": {}, "hand_dha": {"input_hw": [512, 512]}},
           "profiles": {"p": {"run_defaults": {"isbi2015": {"exempt": ["b"], "seed": 5, "train": {"epochs": 2}}},
                              "runs": {"a": {"train": {"epochs": 3}}}}}}
    a = params_from_dict(raw, "a")
    assert (a.seed, a.train.epochs) == (5, 3)  # over the base run's entry, under the profile's
    assert params_from_dict(raw, "b").seed == 0 and params_from_dict(raw, "h").seed == 0
    raw["profiles"]["p"]["run_defaults"]["isbi2015"]["train"]["lr"] = 0.5  # as `dvc exp run -S ...` sets it
    assert params_from_dict(raw, "a").train.lr == 0.5 and params_from_dict(raw, "b").train.lr == 1e-4
    raw["profiles"]["q"] = {"extends": "p"}  # inherited through `extends`
    assert params_from_dict({**raw, "profile": "q"}, "a").train.lr == 0.5


@pytest.mark.parametrize("defaults, match", [
    ([1], r"profiles\.p\.run_defaults: expected a mapping of dataset name"),
    ({"isbi": {}}, r"profiles\.p\.run_defaults\.isbi: 'isbi' is not a dataset"),
    ({"isbi2015": 3}, r"profiles\.p\.run_defaults\.isbi2015: expected a mapping of overrides, got 3"),
    ({"isbi2015": {"exempt": "a"}}, r"profiles\.p\.run_defaults\.isbi2015\.exempt: 'a' must be a list of runs of "
                                    r"isbi2015 \(have: a\)"),
    ({"isbi2015": {"exempt": ["h"]}}, r"run_defaults\.isbi2015\.exempt: \['h'\] must be a list of runs of isbi2015"),
    ({"isbi2015": {"dataset": "hand_dha"}}, r"run_defaults\.isbi2015\.dataset: may not be set for every run"),
    ({"isbi2015": {"run": "b"}}, r"run_defaults\.isbi2015\.run: may not be set for every run"),
    ({"isbi2015": {"train": {"epoch": 1}}}, r"run_defaults\.isbi2015\.train\.epoch: unknown key"),
    ({"isbi2015": {"train": {"epochs": "one"}}}, r"run_defaults\.isbi2015\.train\.epochs: expected an integer"),
    ({"isbi2015": {"train": {"lr": float("nan")}}}, r"run_defaults\.isbi2015\.train\.lr: nan must be a finite"),
])
def test_misused_run_defaults_name_the_key(defaults, match):
    raw = {"profile": "p", "runs": {"a": {"dataset": "isbi2015"}, "h": {"dataset": "hand_dha"}},
           "datasets": {"isbi2015": {}, "hand_dha": {"input_hw": [512, 512]}},
           "profiles": {"p": {"run_defaults": defaults}}}
    with pytest.raises(ConfigError, match=match):
        params_from_dict(raw)


def test_a_run_only_a_profile_defines_is_refused():
    """dvc.yaml makes one stage per top-level run: a run that only a profile names would never train."""
    raw = {"profile": "q", "runs": {"a": {"dataset": "isbi2015"}},
           "profiles": {"q": {"runs": {"a": {"train": {"epochs": 2}}, "extra": {"dataset": "isbi2015"}}}}}
    with pytest.raises(ConfigError, match=r"profiles\.q\.runs\.extra: run 'extra' is not defined under the top-level "
                                          r"runs, so it has no DVC stage"):
        params_from_dict(raw)
    del raw["profiles"]["q"]["runs"]["extra"]
    assert params_from_dict(raw, "a").train.epochs == 2


@pytest.mark.parametrize("csv", ["/data/mine/landmarks.csv", "../landmarks.csv", "sub/../../x.csv", "C:\\\\x.csv", " "])
def test_an_own_datasets_csv_must_lie_inside_its_folder(csv):
    """An absolute csv gave a SameFileError traceback at fetch; '../x.csv' was copied outside the stage's output."""
    with pytest.raises(ConfigError, match=r"datasets\.custom\.csv: .* must be a file name inside the dataset folder"):
        params_from_dict({"datasets": {"custom": {"root": "/data/mine", "csv": csv, "input_hw": [64, 64]}}})
    assert params_from_dict({"datasets": {"custom": {"csv": "labels/landmarks.csv"}}}).datasets["custom"].csv == \
        "labels/landmarks.csv"
