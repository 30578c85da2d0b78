import pytest
import yaml

from farnet.config import Params, effective_dict, load_params, params_from_dict
from farnet.errors import ConfigError
from helpers import committed_params, write_committed_params


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


def test_load_params_names_the_file(tmp_path):
    path = write(tmp_path, {"train": {"optimizer": "sgd"}})
    with pytest.raises(ConfigError, match=r"params\.yaml: train\.optimizer: 'sgd' is not one of"):
        load_params(path)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(tmp_path / "list.yaml")
