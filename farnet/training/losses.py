"""Heatmap regression losses: L2 (paper eq. 2), the Exponential Weighted Center loss (paper eq. 3) and the
Adaptive Wing loss (Wang et al. 2019) that Table 2 compares against.

EWC(y, ŷ) = (y − ŷ)² · α^y: the squared error at each pixel is weighted by α raised to the target intensity,
so pixels near a landmark (y → 1) weigh up to α and background pixels (y → 0) weigh 1. All are averaged over
all pixels of all heatmaps. With coarse-to-fine supervision the loss is summed over the heads, 1:1 (§3.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class L2HeatmapLoss(nn.Module):
    """Mean squared error over all pixels, eq. (2)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred.float() - target) ** 2).mean()


class ExponentialWeightedCenterLoss(nn.Module):
    """EWC loss, eq. (3): mean of (y − ŷ)² · α^y.

    Args:
        alpha: base of the exponential weight (40 in the paper, §3.3); must be >= 1.
    """

    def __init__(self, alpha: float = 40.0):
        super().__init__()
        if alpha < 1:
            raise ValueError(f"EWC alpha must be >= 1 (weight 1 on the background), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = torch.pow(self.alpha, target)
        return (((pred.float() - target) ** 2) * weight).mean()


class AdaptiveWingLoss(nn.Module):
    """Adaptive Wing loss with its weighted loss map: the "MSFA+FR+AW" row of Table 2.

    Wang, Bo and Fuxin, "Adaptive Wing Loss for Robust Face Alignment via Heatmap Regression", ICCV 2019,
    eqs. (6)-(8). Per pixel, with δ = |y − ŷ|::

        AWing(y, ŷ) = ω · ln(1 + (δ/ε)^(α−y))   if δ < θ
                      A · δ − C                  otherwise
        A = ω · (1 / (1 + (θ/ε)^(α−y))) · (α−y) · (θ/ε)^(α−y−1) · (1/ε)
        C = θ · A − ω · ln(1 + (θ/ε)^(α−y))

    so the two branches meet at δ = θ with the same value and slope. The weighted loss map of §4.3 of that
    paper is M = 1 where the target, grey-dilated with a 3x3 window, is >= ``threshold`` and 0 elsewhere; the
    loss is mean(AWing · (W · M + 1)) over all pixels.

    Args:
        omega, theta, epsilon, alpha: ω, θ, ε, α (14, 0.5, 1, 2.1 in that paper).
        weighted: use the weighted loss map (True in that paper); False gives plain mean(AWing).
        weight_w: W of the loss map (10).
        threshold: target level above which the dilated target counts as foreground (0.2).
    """

    def __init__(self, omega: float = 14.0, theta: float = 0.5, epsilon: float = 1.0, alpha: float = 2.1,
                 weighted: bool = True, weight_w: float = 10.0, threshold: float = 0.2):
        super().__init__()
        for name, value in (("omega", omega), ("theta", theta), ("epsilon", epsilon)):
            if not value > 0:
                raise ValueError(f"Adaptive Wing {name} must be > 0, got {value}")
        if not alpha > 1:
            # α − y must stay above 1 for y in [0, 1], else the loss has an infinite slope at δ = 0
            raise ValueError(f"Adaptive Wing alpha must be > 1, got {alpha}")
        self.omega, self.theta, self.epsilon, self.alpha = float(omega), float(theta), float(epsilon), float(alpha)
        self.weighted = weighted
        self.weight_w = float(weight_w)
        self.threshold = float(threshold)

    def pixel_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """AWing per pixel, without the loss map: (B, K, H, W) -> (B, K, H, W)."""
        delta = (target - pred.float()).abs()
        power = self.alpha - target
        ratio = self.theta / self.epsilon
        a = self.omega / (1 + ratio**power) * power * ratio ** (power - 1) / self.epsilon
        c = self.theta * a - self.omega * torch.log1p(ratio**power)
        # δ is clamped to θ in the log branch so that large errors (ignored there by `where`) cannot overflow
        # the power and put NaN into the gradient.
        small = self.omega * torch.log1p((delta.clamp(max=self.theta) / self.epsilon) ** power)
        return torch.where(delta < self.theta, small, a * delta - c)

    def loss_map(self, target: torch.Tensor) -> torch.Tensor:
        """M of the weighted loss map: 1 where the 3x3 grey dilation of the target is >= threshold, else 0."""
        dilated = F.max_pool2d(target, kernel_size=3, stride=1, padding=1)  # 3x3 grey dilation
        return (dilated >= self.threshold).to(target.dtype)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.pixel_loss(pred, target)
        if self.weighted:
            loss = loss * (self.weight_w * self.loss_map(target) + 1)
        return loss.mean()


def build_loss(params) -> nn.Module:
    """Loss from a :class:`~farnet.config.LossParams` section."""
    if params.name == "ewc":
        return ExponentialWeightedCenterLoss(params.alpha)
    if params.name == "l2":
        return L2HeatmapLoss()
    if params.name == "awing":
        return AdaptiveWingLoss(omega=params.awing_omega, theta=params.awing_theta, epsilon=params.awing_epsilon,
                                alpha=params.awing_alpha)
    raise ValueError(f"loss {params.name!r} is not one of 'ewc', 'l2', 'awing'")
