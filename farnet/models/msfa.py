"""Multi-scale feature aggregation (MSFA), paper §3.1.1 and Fig. 3.

The backbone's levels C1..Cn (finest first) go through three paths:

1. up-sampling path 1, from the top level down to L2: ``T_n = 1x1(3x3(C_n))``, ``T_i = fuse(up(T_{i+1}), C_i)``;
2. a down-sampling path from L2 back to the top: a 3x3 stride-2 conv doubles the channels, the result is fused
   with ``T_i`` and compressed back to the doubled width (``D_i``); at the top the fusion is a 3x3 conv to half
   the doubled width;
3. up-sampling path 2, from the top to L1: ``U_n = 1x1(D_n)``, ``U_i = fuse(up(U_{i+1}), D_i)`` with ``T_2``
   at L2 and ``C_1`` at L1; the widths shrink to 128 at L2 and 64 at L1 (higher-resolution dominant).

A 3x3 and a 1x1 conv regress K heatmaps at L1 (half the input resolution); as in the authors' network the
3x3 conv is plain (64 -> 64, bias, no BN, no ReLU) and the 1x1 conv runs in fp32. ``fusion="concat"`` is the paper's
MSFA (concatenation then conv); ``fusion="add"`` is MSFA(+) of Table 2 (FPN/PAN-style: 1x1 projections to a
common width, addition, then a 3x3 conv). For DenseNet-121 (C1..C5 = 64, 256, 512, 1024, 1024 channels) the
concatenations are 1280, 768, ... channels wide, as in the authors' network; here they follow from the
backbone's channel list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from farnet.models.layers import ConvBiasBNReLU, heatmap_head, upsample_to

Fusion = Literal["concat", "add"]


class Fuse(nn.Module):
    """Fuse a path feature with a lateral (skip) feature of the same resolution.

    ``concat``: cat → conv(kernel) → out. ``add``: 1x1 projections where widths differ → add → 3x3 → out.
    """

    def __init__(self, path_channels: int, skip_channels: int, out_channels: int, mode: Fusion, kernel: int = 1):
        super().__init__()
        if mode not in ("concat", "add"):
            raise ValueError(f"fusion {mode!r} is not 'concat' or 'add'")
        self.mode = mode
        if mode == "concat":
            self.conv = ConvBiasBNReLU(path_channels + skip_channels, out_channels, kernel)
        else:
            self.path_proj = ConvBiasBNReLU(path_channels, out_channels, 1) if path_channels != out_channels else None
            self.skip_proj = ConvBiasBNReLU(skip_channels, out_channels, 1) if skip_channels != out_channels else None
            self.conv = ConvBiasBNReLU(out_channels, out_channels, 3)

    def forward(self, path: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "concat":
            return self.conv(torch.cat([path, skip], dim=1))
        path = self.path_proj(path) if self.path_proj is not None else path
        skip = self.skip_proj(skip) if self.skip_proj is not None else skip
        return self.conv(path + skip)


class MultiScaleFeatureAggregation(nn.Module):
    """MSFA over backbone levels C1..Cn (n >= 3), strides doubling from L1.

    Args:
        in_channels: channels of C1..Cn, finest first (from :class:`~farnet.models.backbone.Backbone`).
        num_landmarks: K, the number of heatmaps; ``None`` builds no heatmap head (naive FR*, Table 2).
        fusion: ``"concat"`` (MSFA) or ``"add"`` (MSFA(+)).
        width: channels of the up-sampling paths (256 in the paper); L2 and L1 of path 2 use width/2 and width/4.
        head: the heatmap head's style, "authors" or "bn_relu" (:func:`~farnet.models.layers.heatmap_head`).
    """

    def __init__(self, in_channels: Sequence[int], num_landmarks: int | None, fusion: Fusion = "concat",
                 width: int = 256, head: str = "authors"):
        super().__init__()
        n = len(in_channels)
        if n < 3:
            raise ValueError(f"MSFA needs at least 3 levels, got channels {list(in_channels)}")
        c = list(in_channels)
        # widths of the down path at L3..Ln: doubling from 2*width (512, 1024, 2048 for n = 5)
        down = [width * 2 ** (i - 1) for i in range(2, n)]  # index j ↔ level j + 3
        top_width = down[-1] // 2  # D_n: 3x3 fusion to half the doubled width (1024 for n = 5)

        self.top = nn.Sequential(ConvBiasBNReLU(c[-1], 2 * width, 3), ConvBiasBNReLU(2 * width, width, 1))
        # up path 1: T_{n-1} .. T_2 (index j ↔ level j + 2)
        self.up1 = nn.ModuleList(Fuse(width, c[j + 1], width, fusion) for j in range(n - 2))
        # down path: stride-2 convs into L3..Ln and their fusions with T_3..T_n
        prev = [width] + down[:-1]
        self.down_convs = nn.ModuleList(ConvBiasBNReLU(p, d, 3, stride=2) for p, d in zip(prev, down))
        self.down_fuse = nn.ModuleList(
            Fuse(d, width, top_width if j == len(down) - 1 else d, fusion, kernel=3 if j == len(down) - 1 else 1)
            for j, d in enumerate(down)
        )
        d_widths = down[:-1] + [top_width]  # channels of D_3..D_n
        # up path 2: U_n = 1x1(D_n); U_{n-1}..U_3 fuse with D_i; U_2 with T_2; U_1 with C_1
        self.up2_top = ConvBiasBNReLU(d_widths[-1], width, 1)
        self.up2 = nn.ModuleList(Fuse(width, d_widths[j], width, fusion) for j in range(len(d_widths) - 1))
        self.up2_l2 = Fuse(width, width, width // 2, fusion)
        self.up2_l1 = Fuse(width // 2, c[0], width // 4, fusion)
        self.out_channels = width // 4
        self.head = None
        if num_landmarks is not None:
            self.head = heatmap_head(width // 4, num_landmarks, head, width=width // 4)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """C1..Cn -> (U1 features (B, width/4, H/2, W/2), heatmaps (B, K, H/2, W/2) or None)."""
        n = len(feats)
        t = [None] * n  # T_i at index i - 1
        t[n - 1] = self.top(feats[n - 1])
        for level in range(n - 1, 1, -1):  # levels n-1 .. 2 (1-based)
            i = level - 1
            t[i] = self.up1[i - 1](upsample_to(t[i + 1], feats[i]), feats[i])
        d = t[1]
        ds = []
        for j, (conv, fuse) in enumerate(zip(self.down_convs, self.down_fuse)):
            d = fuse(conv(d), t[j + 2])
            ds.append(d)  # D_3 .. D_n
        u = self.up2_top(ds[-1])
        for j in range(len(ds) - 2, -1, -1):
            u = self.up2[j](upsample_to(u, ds[j]), ds[j])
        u = self.up2_l2(upsample_to(u, t[1]), t[1])
        u = self.up2_l1(upsample_to(u, feats[0]), feats[0])
        heatmaps = self.head(u) if self.head is not None else None
        return u, heatmaps
