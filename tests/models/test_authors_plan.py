"""The DenseNet-121 FARNet pinned to the authors' network (docs/design.md §3): heads, taps, channel plan, size, cost.

The facts come from the authors' published network, counted with K = 19 and their 1x1 FR input conv: 61,218,963
parameters used by the forward pass and 310.93 GFLOP at 800x640 (``torch.utils.flop_counter``). The model is
built on the meta device, so shapes alone are checked and nothing is computed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from farnet.models.backbone import Backbone
from farnet.evaluation.heatmaps import decode_argmax, decode_subpixel, encode_heatmaps
from farnet.models.layers import Float32Conv2d
from farnet.models.farnet import FARNet

K = 19


@pytest.fixture(scope="module")
def authors_net() -> FARNet:
    with torch.device("meta"):
        return FARNet(Backbone("densenet121"), K, fr_input_kernel=1)


def conv_shape(conv: nn.Conv2d) -> tuple:
    return conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias is not None


def test_parameter_count_is_the_authors(authors_net):
    assert sum(p.numel() for p in authors_net.parameters()) == 61_218_963


def test_forward_flops_at_800x640_are_the_authors(authors_net):
    with FlopCounterMode(display=False) as counter:
        out = authors_net(torch.empty(1, 3, 800, 640, device="meta"))
    assert counter.get_total_flops() == 310_929_408_000
    assert out.fine.shape == (1, K, 800, 640) and out.coarse.shape == (1, K, 400, 320)


def test_heads_are_a_plain_3x3_then_a_1x1_conv(authors_net):
    msfa, fr = authors_net.msfa.head, authors_net.fr.head
    assert [type(m) for m in msfa] == [nn.Conv2d, Float32Conv2d]  # no BN, no ReLU, no output activation
    assert [conv_shape(m) for m in msfa] == [(64, 64, (3, 3), True), (64, K, (1, 1), True)]
    assert [type(m) for m in fr] == [nn.Conv2d, Float32Conv2d]
    assert [conv_shape(m) for m in fr] == [(115, 115, (3, 3), True), (115, K, (1, 1), True)]


def test_fr_input_conv_is_1x1_bn_relu_to_32_channels(authors_net):
    conv, bn, relu = authors_net.fr.input_conv
    assert conv_shape(conv) == (3, 32, (1, 1), True)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 32 and isinstance(relu, nn.ReLU)


def test_msfa_channel_plan_level_by_level(authors_net):
    m = authors_net.msfa

    def plan(unit):  # (in, out, kernel) of a conv + BN + ReLU unit
        return unit[0].in_channels, unit[0].out_channels, unit[0].kernel_size[0]

    assert [plan(u) for u in m.top] == [(1024, 512, 3), (512, 256, 1)]  # T5
    # up path 1: T4, T3, T2 = up(T) ⊕ C4 / C3 / C2 -> 1x1 -> 256
    assert [plan(f.conv) for f in reversed(m.up1)] == [(1280, 256, 1), (768, 256, 1), (512, 256, 1)]
    # down path: 3x3 stride 2, then fusion with T3, T4, T5
    assert [plan(c) + (c[0].stride[0],) for c in m.down_convs] == [(256, 512, 3, 2), (512, 1024, 3, 2),
                                                                   (1024, 2048, 3, 2)]
    assert [plan(f.conv) for f in m.down_fuse] == [(768, 512, 1), (1280, 1024, 1), (2304, 1024, 3)]
    # up path 2: D5 -> 1x1 -> 256; up ⊕ D4, up ⊕ D3 -> 256; up ⊕ T2 -> 128; up ⊕ C1 -> 64
    assert plan(m.up2_top) == (1024, 256, 1)
    assert [plan(f.conv) for f in reversed(m.up2)] == [(1280, 256, 1), (768, 256, 1)]
    assert plan(m.up2_l2.conv) == (512, 128, 1) and plan(m.up2_l1.conv) == (192, 64, 1)
    units = [u for u in m.modules() if isinstance(u, nn.Sequential) and isinstance(u[0], nn.Conv2d)
             and len(u) == 3]
    assert units and all(u[0].bias is not None for u in units)  # the authors' convs keep a bias before the BN


def test_densenet_taps_are_the_authors():
    torch.manual_seed(0)
    backbone = Backbone("densenet121").eval()
    body = backbone.body
    seen = {}
    hooks = [getattr(body, f"features_denseblock{i}").register_forward_hook(
        lambda mod, inp, out, i=i: seen.__setitem__(i, out)) for i in (1, 2, 3)]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = backbone(x)
        c1 = body.features_conv0(x)
    for hook in hooks:
        hook.remove()
    assert torch.equal(feats[0], c1)  # C1: the first conv's raw output, before its BN and ReLU
    assert feats[0].min() < 0
    for level in (1, 2, 3):  # C2..C4: the dense blocks' outputs, before the transitions
        assert torch.equal(feats[level], seen[level])
    assert feats[4].min() < 0  # C5: after norm5's BN, without its ReLU
    assert isinstance(body.features_norm5.act, nn.Identity)


def _perfect_heatmaps(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussians (the paper's σ = 10 px) at sub-pixel offsets symmetric about the pixel centres, so argmax's
    rounding averages to 0."""
    offsets = torch.tensor([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    fx, fy = torch.meshgrid(offsets, offsets, indexing="ij")
    points = torch.stack([30 + fx.reshape(-1), 27 + fy.reshape(-1)], dim=-1).unsqueeze(0)  # (1, 100, 2)
    return encode_heatmaps(points, (size, size), 10.0), points


def _signed_error(decoded: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return (decoded - points).mean(dim=(0, 1))  # (x, y)


def test_bf16_heatmaps_would_bias_argmax_towards_the_top_left():
    heatmaps, points = _perfect_heatmaps()
    assert _signed_error(decode_argmax(heatmaps), points).abs().max() < 1e-6
    rounded = heatmaps.bfloat16().float()  # ties at the peak: argmax takes the first, top-left one
    assert (_signed_error(decode_argmax(rounded), points) < -0.05).all()


def _pass_through(conv: nn.Conv2d) -> nn.Conv2d:
    k = conv.in_channels
    with torch.no_grad():
        conv.weight.copy_(torch.eye(k).reshape(k, k, 1, 1))
        conv.bias.zero_()
    return conv


@pytest.mark.parametrize("decoder, tolerance", [(decode_argmax, 1e-6), (decode_subpixel, 1e-3)])
def test_a_heads_last_conv_decodes_perfect_heatmaps_without_bias_under_bf16_autocast(decoder, tolerance):
    heatmaps, points = _perfect_heatmaps()
    k = heatmaps.shape[1]
    head, plain = _pass_through(Float32Conv2d(k, k, 1)), _pass_through(nn.Conv2d(k, k, 1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, rounded = head(heatmaps), plain(heatmaps)
        assert out.dtype == torch.float32 and rounded.dtype == torch.bfloat16
        error, biased = _signed_error(decoder(out), points), _signed_error(decoder(rounded.float()), points)
    assert error.abs().max() < tolerance
    assert (biased < -tolerance).all()  # what a bf16 last conv gives: the check can fail


def test_every_head_of_farnet_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = FARNet(Backbone("densenet121"), 3).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert out.fine.dtype == torch.float32 and out.coarse.dtype == torch.float32
