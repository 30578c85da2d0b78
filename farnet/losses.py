"""Heatmap regression losses: L2 (paper eq. 2) and the Exponential Weighted Center loss (paper eq. 3).

EWC(y, ŷ) = (y − ŷ)² · α^y: the squared error at each pixel is weighted by α raised to the target intensity,
so pixels near a landmark (y → 1) weigh up to α and background pixels (y → 0) weigh 1. Both are averaged over
all pixels of all heatmaps. With coarse-to-fine supervision the loss is summed over the heads, 1:1 (§3.4).
"""

from __future__ import annotations

import torch
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


def build_loss(params) -> nn.Module:
    """Loss from a :class:`~farnet.config.LossParams` section."""
    if params.name == "ewc":
        return ExponentialWeightedCenterLoss(params.alpha)
    if params.name == "l2":
        return L2HeatmapLoss()
    raise ValueError(f"loss {params.name!r} is not one of 'ewc', 'l2'")
