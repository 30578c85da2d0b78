"""Small building blocks shared by the FARNet modules and the baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Convolution + batch norm + ReLU, 'same' padding; the unit every MSFA and FR conv is made of."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear up-sampling of ``x`` to the spatial size of ``like`` (x2 between adjacent levels)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
