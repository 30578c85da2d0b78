import math

import pytest
import torch

from farnet.config import LossParams, params_from_dict
from farnet.training.losses import AdaptiveWingLoss, ExponentialWeightedCenterLoss, L2HeatmapLoss, build_loss
from farnet.evaluation.heatmaps import encode_heatmaps


def test_ewc_equals_formula_on_hand_made_values():
    y = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    pred = torch.tensor([[[[0.1, 0.3], [0.6, 0.25]]]])
    # (0.1² · 40⁰ + 0.2² · 40^0.5 + 0.4² · 40¹ + 0) / 4
    expected = (0.01 * 1 + 0.04 * 40**0.5 + 0.16 * 40 + 0.0) / 4
    assert ExponentialWeightedCenterLoss(40)(pred, y).item() == pytest.approx(expected, rel=1e-6)
    assert L2HeatmapLoss()(pred, y).item() == pytest.approx((0.01 + 0.04 + 0.16) / 4, rel=1e-6)


def test_zero_at_a_perfect_prediction_and_larger_for_a_shifted_peak():
    target = encode_heatmaps(torch.tensor([[[20.0, 20.0]]]), (40, 40), 3.0)
    shifted = encode_heatmaps(torch.tensor([[[22.0, 20.0]]]), (40, 40), 3.0)
    further = encode_heatmaps(torch.tensor([[[26.0, 20.0]]]), (40, 40), 3.0)
    ewc = ExponentialWeightedCenterLoss(40)
    assert ewc(target, target).item() == 0.0
    assert 0 < ewc(shifted, target).item() < ewc(further, target).item()
    # the weighting puts the peak's error above plain L2
    assert ewc(shifted, target).item() > L2HeatmapLoss()(shifted, target).item()


def test_alpha_one_is_l2():
    y = torch.rand(1, 2, 8, 8)
    p = torch.rand(1, 2, 8, 8)
    torch.testing.assert_close(ExponentialWeightedCenterLoss(1.0)(p, y), L2HeatmapLoss()(p, y))


def test_build_loss_and_bad_alpha():
    assert isinstance(build_loss(LossParams("ewc", 20.0)), ExponentialWeightedCenterLoss)
    assert build_loss(LossParams("ewc", 20.0)).alpha == 20.0
    assert isinstance(build_loss(LossParams("l2", 40.0)), L2HeatmapLoss)
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        ExponentialWeightedCenterLoss(0.5)


def awing_formula(y, p, omega=14.0, theta=0.5, eps=1.0, alpha=2.1):
    """Adaptive Wing per pixel in plain Python, straight from Wang et al. 2019, eq. (6)-(7)."""
    d, e = abs(y - p), alpha - y
    if d < theta:
        return omega * math.log(1 + (d / eps) ** e)
    a = omega * (1 / (1 + (theta / eps) ** e)) * e * (theta / eps) ** (e - 1) * (1 / eps)
    c = theta * a - omega * math.log(1 + (theta / eps) ** e)
    return a * d - c


def test_adaptive_wing_equals_its_formula_on_both_branches():
    # δ = 0.2, 0.3 (< θ: log branch), 0.8, 1.0 (>= θ: linear branch; ŷ outside [0, 1] on purpose)
    y = [0.0, 1.0, 0.5, 0.0]
    p = [0.2, 0.7, 1.3, -1.0]
    loss = AdaptiveWingLoss(weighted=False)
    per_pixel = loss.pixel_loss(torch.tensor(p).view(1, 1, 2, 2), torch.tensor(y).view(1, 1, 2, 2)).flatten()
    for got, yi, pi in zip(per_pixel.tolist(), y, p):
        assert got == pytest.approx(awing_formula(yi, pi), rel=1e-5)
    # a hand check of the first value: 14 · ln(1 + 0.2^2.1)
    assert per_pixel[0].item() == pytest.approx(14 * math.log(1 + 0.2**2.1), rel=1e-5)
    mean = sum(awing_formula(yi, pi) for yi, pi in zip(y, p)) / 4
    assert loss(torch.tensor(p).view(1, 1, 2, 2), torch.tensor(y).view(1, 1, 2, 2)).item() == pytest.approx(mean, rel=1e-5)


def test_adaptive_wing_weighted_loss_map_on_a_hand_made_target():
    # 5x5 target: a peak at (row 1, col 1), 0.3 in the corner (4, 4), 0.15 (below the 0.2 threshold) at (0, 4)
    target = [[0.0] * 5 for _ in range(5)]
    target[1][1], target[4][4], target[0][4] = 1.0, 0.3, 0.15
    # 3x3 grey dilation >= 0.2: rows 0-2 x cols 0-2 around the peak (9 pixels) + rows 3-4 x cols 3-4 (4 pixels)
    fg = {(r, c) for r in range(3) for c in range(3)} | {(r, c) for r in (3, 4) for c in (3, 4)}
    loss = AdaptiveWingLoss()
    t = torch.tensor(target).view(1, 1, 5, 5)
    m = loss.loss_map(t)[0, 0]
    assert m.sum().item() == 13
    assert {(r, c) for r in range(5) for c in range(5) if m[r, c] == 1} == fg
    pred = [[0.1 * ((r + c) % 3) for c in range(5)] for r in range(5)]
    expected = sum(awing_formula(target[r][c], pred[r][c]) * (10 * ((r, c) in fg) + 1)
                   for r in range(5) for c in range(5)) / 25
    assert loss(torch.tensor(pred).view(1, 1, 5, 5), t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("y", [0.0, 0.3, 1.0])
def test_adaptive_wing_is_continuous_at_theta(y):
    loss = AdaptiveWingLoss(weighted=False)
    target = torch.full((1, 1, 1, 2), y)
    pred = torch.tensor([y - 0.5 + 1e-6, y - 0.5 - 1e-6]).view(1, 1, 1, 2)  # δ just below and just above θ
    below, above = loss.pixel_loss(pred, target).flatten().tolist()
    assert abs(below - above) < 1e-4
    p_below, p_above = pred.flatten().tolist()  # as rounded to float32
    assert abs(y - p_below) < 0.5 <= abs(y - p_above)
    assert below == pytest.approx(awing_formula(y, p_below), rel=1e-5)
    assert above == pytest.approx(awing_formula(y, p_above), rel=1e-5)


def test_adaptive_wing_zero_at_a_perfect_prediction_and_larger_for_a_shifted_peak():
    target = encode_heatmaps(torch.tensor([[[20.0, 20.0]]]), (40, 40), 3.0)
    shifted = encode_heatmaps(torch.tensor([[[22.0, 20.0]]]), (40, 40), 3.0)
    further = encode_heatmaps(torch.tensor([[[26.0, 20.0]]]), (40, 40), 3.0)
    awing = AdaptiveWingLoss()
    assert awing(target, target).item() == 0.0
    assert 0 < awing(shifted, target).item() < awing(further, target).item()


def test_adaptive_wing_gradient_is_finite_for_perfect_and_wild_predictions():
    target = encode_heatmaps(torch.tensor([[[4.0, 4.0]]]), (8, 8), 2.0)
    pred = target.clone()
    pred[0, 0, 0, :3] = torch.tensor([1e20, -1e20, 3.0])
    pred.requires_grad_(True)
    AdaptiveWingLoss()(pred, target).backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0, 0, 4, 4].item() == 0.0  # δ = 0: flat


def test_adaptive_wing_rejects_bad_parameters():
    with pytest.raises(ValueError, match="alpha must be > 1, got 0.9"):
        AdaptiveWingLoss(alpha=0.9)
    with pytest.raises(ValueError, match="theta must be > 0, got 0"):
        AdaptiveWingLoss(theta=0)


def test_build_loss_adaptive_wing():
    loss = build_loss(LossParams(name="awing"))
    assert isinstance(loss, AdaptiveWingLoss)
    assert (loss.omega, loss.theta, loss.epsilon, loss.alpha) == (14.0, 0.5, 1.0, 2.1)
    assert loss.weighted and loss.weight_w == 10.0 and loss.threshold == 0.2
    custom = build_loss(params_from_dict({"loss": {"name": "awing", "awing_theta": 0.4}}).loss)
    assert custom.theta == 0.4
