import pytest
import torch

from farnet.models.backbone import Backbone
from farnet.training.steps import heatmap_loss
from farnet.training.losses import ExponentialWeightedCenterLoss
from farnet.models.interface import final_heatmaps
from farnet.models.farnet import FARNet
from farnet.models.msfa import MultiScaleFeatureAggregation

K = 5


@pytest.mark.parametrize("name", ["vgg16", "vgg19", "resnet101", "resnet152", "densenet121", "densenet169"])
def test_output_shapes_for_every_backbone(name):
    model = FARNet(Backbone(name), K).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.fine.shape == (1, K, 64, 96)
    assert out.coarse.shape == (1, K, 32, 48)


def test_densenet121_at_the_paper_input_size():
    model = FARNet(Backbone("densenet121"), 19).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 800, 640))
    assert out.fine.shape == (1, 19, 800, 640)
    assert out.coarse.shape == (1, 19, 400, 320)


def test_msfa_channel_plan_follows_the_backbone():
    # DenseNet-121: the concatenations of up path 1 are 256 + 1024 = 1280 and 256 + 512 = 768 wide
    msfa = MultiScaleFeatureAggregation([64, 256, 512, 1024, 1024], 19)
    assert msfa.up1[2].conv[0].in_channels == 1280
    assert msfa.up1[1].conv[0].in_channels == 768
    assert msfa.top[0][0].out_channels == 512 and msfa.top[1][0].out_channels == 256
    assert [c[0].out_channels for c in msfa.down_convs] == [512, 1024, 2048]
    assert [f.conv[0].out_channels for f in msfa.down_fuse] == [512, 1024, 1024]
    assert msfa.down_fuse[-1].conv[0].kernel_size == (3, 3)
    assert msfa.up2_l2.conv[0].out_channels == 128 and msfa.up2_l1.conv[0].out_channels == 64
    # ResNet: C5 has 2048 channels, so the first fusion is 256 + 1024 and the top conv reads 2048
    resnet = MultiScaleFeatureAggregation([64, 256, 512, 1024, 2048], 19)
    assert resnet.top[0][0].in_channels == 2048


def test_fr_concatenates_u1_c0_and_msfa_heatmaps():
    model = FARNet(Backbone("densenet121"), 19)
    assert model.fr.head[0].in_channels == 64 + 32 + 19  # the authors' 115
    naive = FARNet(Backbone("densenet121"), 19, refinement="naive")
    assert naive.fr.head[0].in_channels == 64 + 32
    vgg = FARNet(Backbone("vgg16"), 19)
    assert vgg.fr.input_conv is None and vgg.fr.head[0].in_channels == 64 + 64 + 19
    lighter = FARNet(Backbone("densenet121"), 19, head="bn_relu")
    assert lighter.fr.head[0][0].in_channels == 115 and lighter.fr.head[0][0].out_channels == 64


@pytest.mark.parametrize("fusion, refinement, heads", [
    ("concat", "guided", ("fine", "coarse")),
    ("add", "guided", ("fine", "coarse")),
    ("concat", "naive", ("fine",)),
    ("concat", "none", ("coarse",)),
])
def test_variants_have_their_heads_and_no_unused_modules(fusion, refinement, heads):
    torch.manual_seed(0)
    model = FARNet(Backbone("densenet121"), K, fusion=fusion, refinement=refinement)
    x = torch.randn(1, 3, 64, 64)
    out = model(x)
    assert {name for name in ("fine", "coarse") if getattr(out, name) is not None} == set(heads)
    assert final_heatmaps(out, (64, 64)).shape == (1, K, 64, 64)
    points = torch.tensor([[[10.0, 20.0]] * K])
    loss, _ = heatmap_loss(out, points, (64, 64), 2.0, ExponentialWeightedCenterLoss(40))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []  # every parameter gets a gradient: nothing built and unused


@pytest.mark.parametrize("name", ["vgg16", "resnet101"])
def test_every_parameter_gets_a_gradient_other_backbones(name):
    model = FARNet(Backbone(name), K)
    out = model(torch.randn(1, 3, 64, 64))
    (out.fine.mean() + out.coarse.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_options():
    with pytest.raises(ValueError, match="refinement 'full' is not one of"):
        FARNet(Backbone("densenet121"), K, refinement="full")
    with pytest.raises(ValueError, match="fusion 'mul'"):
        FARNet(Backbone("densenet121"), K, fusion="mul")
    with pytest.raises(ValueError, match="needs the FR module"):
        FARNet(Backbone("vgg16"), K, refinement="none")
    with pytest.raises(ValueError, match="num_landmarks"):
        FARNet(Backbone("densenet121"), 0)
    with pytest.raises(ValueError, match="head 'plain' is not one of authors, bn_relu"):
        FARNet(Backbone("densenet121"), K, head="plain")
