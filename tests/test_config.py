import pytest
import yaml

from farnet.config import Params, effective_dict, load_params, params_from_dict
from farnet.errors import ConfigError


def write(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_project_params_load_as_the_paper_protocol():
    p = load_params("params.yaml")
    assert p.profile == "paper"
    assert p.data.input_hw == (800, 640)
    assert p.heatmap.sigma_px == 10.0
    assert p.loss.name == "ewc" and p.loss.alpha == 40.0
    assert p.train.epochs == 300 and p.train.batch_size == 1 and p.train.lr == 1e-4
    assert p.model.backbone == "densenet121" and p.model.pretrained == "none"


def test_quick_profile_merges_over_the_base():
    raw = yaml.safe_load(open("params.yaml"))
    raw["profile"] = "quick"
    p = params_from_dict(raw)
    assert p.data.input_hw == (320, 256)
    assert p.train.epochs == 2
    assert p.loss.alpha == 40.0  # not overridden: `dvc exp run -S loss.alpha=20` stays effective
    raw["loss"] = {"name": "ewc", "alpha": 20}
    assert params_from_dict(raw).loss.alpha == 20.0


def test_defaults_and_frozen():
    p = params_from_dict({})
    assert p == Params()
    with pytest.raises(AttributeError):
        p.seed = 3  # type: ignore[misc]
    assert effective_dict(p)["data"]["input_hw"] == [800, 640]


@pytest.mark.parametrize("data, match", [
    ({"loss": {"alfa": 20}}, r"loss\.alfa: unknown key"),
    ({"bogus": 1}, r"bogus: unknown key"),
    ({"train": {"epochs": "many"}}, r"train\.epochs: expected an integer"),
    ({"train": {"epochs": 2.5}}, r"train\.epochs: expected an integer"),
    ({"train": {"channels_last": "yes"}}, r"train\.channels_last: expected true or false"),
    ({"loss": {"alpha": "forty"}}, r"loss\.alpha: expected a number"),
    ({"model": {"backbone": "resnet50"}}, r"model\.backbone: 'resnet50' is not one of"),
    ({"data": {"input_hw": [800]}}, r"data\.input_hw: expected 2 values"),
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
