import pytest
import torch

from farnet.config import LossParams
from farnet.losses import ExponentialWeightedCenterLoss, L2HeatmapLoss, build_loss
from farnet.heatmaps import encode_heatmaps


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
