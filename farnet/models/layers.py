"""Small building blocks shared by the FARNet modules and the baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Convolution + batch norm + ReLU, 'same' padding; the unit every MSFA and FR conv is made of.

    ``bias``: the authors' MSFA and FR convs keep a bias before their BN (redundant, but counted in their
    parameters); the baselines' convs have none.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = False):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def ConvBiasBNReLU(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> ConvBNReLU:  # noqa: N802
    """The MSFA and FR unit as in the authors' network: conv with a bias, then BN and ReLU."""
    return ConvBNReLU(in_channels, out_channels, kernel_size, stride, bias=True)


class Float32Conv2d(nn.Conv2d):
    """A convolution that runs in fp32 whatever the autocast setting: the last conv of every heatmap head.

    Heatmaps rounded to bf16 (8 significant bits) tie at their peak, and argmax breaks the ties towards the
    top-left (about -0.09 input px in x and y on perfect maps); so the heads' last convs, the loss and the
    decoding all see fp32 (docs/design.md §3, numerics).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
            with torch.autocast(kind, enabled=False):
                return super().forward(x.float())
        return super().forward(x.float())


HEADS = ("authors", "bn_relu")


def heatmap_head(in_channels: int, num_landmarks: int, style: str = "authors", width: int = 64) -> nn.Sequential:
    """A heatmap head: a 3x3 conv, then a 1x1 conv to K heatmaps (fp32, no output activation).

    Args:
        style: ``"authors"``: the 3x3 conv is plain (bias, no BN, no ReLU) and keeps ``in_channels`` channels, as
            in the authors' network; ``"bn_relu"``: conv + BN + ReLU to ``width`` channels (an option, lighter).
        width: channels of the ``"bn_relu"`` 3x3 conv.
    """
    if style == "authors":
        return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1),
                             Float32Conv2d(in_channels, num_landmarks, 1))
    if style == "bn_relu":
        return nn.Sequential(ConvBiasBNReLU(in_channels, width, 3), Float32Conv2d(width, num_landmarks, 1))
    raise ValueError(f"head {style!r} is not one of {', '.join(HEADS)}")


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear up-sampling of ``x`` to the spatial size of ``like`` (x2 between adjacent levels)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
