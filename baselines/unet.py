"""The original U-Net (Ronneberger et al., MICCAI 2015) as a heatmap regressor: the "UNet" row of Table 2.

Four down steps (two 3x3 convs, then a 2x2 max-pool) take the channels 64 -> 128 -> 256 -> 512 -> 1024; four
up steps (a 2x2 transposed conv that halves the channels, concatenation with the skip at that resolution, two
3x3 convs) come back to 64 channels at the input resolution, and a 1x1 conv gives the K heatmaps. The paper
(§4.4) compares against this network "original U-Net" trained from scratch, with the L2 loss.
"""

from __future__ import annotations

import torch
from torch import nn

from farnet.models.layers import ConvBNReLU, Float32Conv2d
from farnet.models.interface import Heatmaps


# deviation: 'same' padding (the original uses valid convs and crops the skips), so the heatmaps come out at
# the input resolution with nothing cropped; and batch norm after every conv, which the original lacks: the
# network trains from scratch with batch 1 (paper §4.2), and a plain stack of 23 convs trains poorly from
# scratch without normalisation.
class DoubleConv(nn.Sequential):
    """Two 3x3 conv + BN + ReLU, the unit of every U-Net step."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvBNReLU(in_channels, out_channels, 3), ConvBNReLU(out_channels, out_channels, 3))


class UpStep(nn.Module):
    """2x2 transposed conv (halves the channels), concatenation with the skip, two 3x3 convs."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net with 'same' padding: (B, 3, H, W) image -> (B, K, H, W) heatmaps.

    Args:
        num_landmarks: K.
        base_channels: channels of the first step (64 in the original); step i has ``base_channels * 2**i``.
        depth: number of down (and up) steps (4 in the original).
        in_channels: channels of the input image.
    """

    def __init__(self, num_landmarks: int, base_channels: int = 64, depth: int = 4, in_channels: int = 3):
        super().__init__()
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
        if depth < 1 or base_channels < 1:
            raise ValueError(f"depth and base_channels must be >= 1, got {depth} and {base_channels}")
        widths = [base_channels * 2**i for i in range(depth + 1)]  # 64, 128, 256, 512, 1024
        self.multiple = 2**depth
        self.down = nn.ModuleList(DoubleConv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-2]], widths))
        self.pool = nn.MaxPool2d(2)
        self.bottom = DoubleConv(widths[-2], widths[-1])
        self.up = nn.ModuleList(UpStep(widths[i + 1], widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = Float32Conv2d(widths[0], num_landmarks, 1)  # no BN/ReLU, no output activation; fp32
        self.channels = widths

    def forward(self, image: torch.Tensor) -> Heatmaps:
        """(B, 3, H, W) normalised image, H and W multiples of 2**depth -> Heatmaps(fine=(B, K, H, W), None)."""
        h, w = image.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"U-Net input size {h}x{w} is not a multiple of {self.multiple} in both dimensions")
        skips = []
        x = image
        for step in self.down:
            x = step(x)  # (B, C_i, H / 2**i, W / 2**i)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)  # (B, 1024, H / 16, W / 16)
        for step, skip in zip(self.up, reversed(skips)):
            x = step(x, skip)
        return Heatmaps(fine=self.head(x), coarse=None)
