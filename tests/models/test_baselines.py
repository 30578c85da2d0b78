import pytest
import torch

from baselines.fpn import FeaturePyramidNetwork
from baselines.unet import UNet
from farnet.models.backbone import Backbone
from farnet.models.registry import BACKBONE_NAMES as BACKBONES
from farnet.config import ModelParams, params_from_dict
from farnet.training.engine import RunSettings, TrainOptions, train
from farnet.core.errors import ConfigError
from farnet.models.layers import Float32Conv2d
from farnet.training.losses import L2HeatmapLoss
from farnet.models.factory import build_model
from farnet.models.farnet import FARNet

K = 3


class Data(torch.utils.data.Dataset):
    """Two random grey images with K landmarks each: one training step at batch size 2."""

    def __init__(self, hw, n=2, k=K):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randint(0, 256, (n, 1, *hw), generator=g, dtype=torch.uint8)
        self.points = torch.rand(n, k, 2, generator=g) * torch.tensor([hw[1] - 1, hw[0] - 1])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.points[i], i


def unet():
    torch.manual_seed(0)
    return UNet(K)


def fpn():
    torch.manual_seed(0)
    return FeaturePyramidNetwork(Backbone("densenet121"), K)


MODELS = [pytest.param(unet, (32, 48), id="unet"), pytest.param(fpn, (64, 64), id="fpn")]


@pytest.mark.parametrize("make, hw", MODELS)
def test_output_at_input_resolution_and_every_parameter_gets_a_gradient(make, hw):
    model = make().train()
    out = model(torch.randn(2, 3, *hw))
    assert out.fine.shape == (2, K, *hw)
    assert out.coarse is None
    out.fine.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("make, hw", MODELS)
def test_one_training_step_through_the_engine(make, hw, tmp_path):
    model = make()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, Data(hw), L2HeatmapLoss(), TrainOptions(epochs=1, sigma_px=2.0, batch_size=2), tmp_path,
                   RunSettings(fingerprint="t", progress=False))
    assert result.steps == 1
    loss = result.history[0]["loss"]
    assert loss == pytest.approx(result.history[0]["loss_fine"]) and torch.isfinite(torch.tensor(loss))
    assert "loss_coarse" not in result.history[0]
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), name


def test_unet_has_the_original_channel_plan():
    model = UNet(19)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(31.0e6, rel=0.01)  # Ronneberger: ~31M
    assert [step[1][0].out_channels for step in model.down] == [64, 128, 256, 512]
    assert model.bottom[1][0].out_channels == 1024
    assert [step.up.out_channels for step in model.up] == [512, 256, 128, 64]
    assert [step.conv[0][0].in_channels for step in model.up] == [1024, 512, 256, 128]  # up (C/2) ⊕ skip (C/2)
    assert model.head.in_channels == 64 and model.head.out_channels == 19 and isinstance(model.head, Float32Conv2d)


def test_unet_rejects_sizes_it_cannot_halve_four_times():
    with pytest.raises(ValueError, match=r"40x48 is not a multiple of 16"):
        UNet(K)(torch.randn(1, 3, 40, 48))
    with pytest.raises(ValueError, match="num_landmarks must be >= 1, got 0"):
        UNet(0)


@pytest.mark.parametrize("name, c2_to_c5", [
    ("densenet121", [256, 512, 1024, 1024]),
    ("resnet101", [256, 512, 1024, 2048]),
])
def test_fpn_laterals_read_c2_to_c5_of_the_backbone(name, c2_to_c5):
    backbone = Backbone(name)
    model = FeaturePyramidNetwork(backbone, K)
    assert [backbone.strides[i] for i in model.levels] == [4, 8, 16, 32]
    assert [conv.in_channels for conv in model.lateral] == c2_to_c5 == backbone.channels[1:]
    assert all(conv.out_channels == 256 and conv.kernel_size == (1, 1) for conv in model.lateral)
    assert model.smooth.kernel_size == (3, 3)
    assert model.head[0][0].kernel_size == (3, 3) and model.head[1].kernel_size == (1, 1)
    assert model.head[1].out_channels == K and isinstance(model.head[1], Float32Conv2d)


@pytest.mark.parametrize("name", BACKBONES)
def test_fpn_works_on_every_backbone(name):
    model = FeaturePyramidNetwork(Backbone(name), K).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 64))
    assert out.fine.shape == (1, K, 32, 64)
    # VGG's deepest block is at stride 16: its pyramid is C2..C4
    assert [model.backbone.strides[i] for i in model.levels] == ([4, 8, 16] if name.startswith("vgg") else [4, 8, 16, 32])


@pytest.mark.parametrize("architecture, cls", [("unet", UNet), ("fpn", FeaturePyramidNetwork), ("farnet", FARNet)])
def test_build_model_dispatches_on_architecture(architecture, cls):
    model = build_model(ModelParams(architecture=architecture), K)
    assert type(model) is cls
    if architecture == "fpn":
        assert model.backbone.name == "densenet121"


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="architecture 'hrnet' is not one of"):
        build_model(ModelParams(architecture="hrnet"), K)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"model\.architecture: 'hrnet' is not one of"):
        params_from_dict({"model": {"architecture": "hrnet"}})
    assert params_from_dict({"model": {"architecture": "unet"}}).model.architecture == "unet"
    assert params_from_dict({}).model.architecture == "farnet"
