"""Feature Pyramid Network (Lin et al., CVPR 2017) as a heatmap regressor: the "FPN" row of Table 2.

The paper (§4.4) builds FPN on the same DenseNet-121 backbone as FARNet "for a fair comparison": lateral 1x1
convs bring C2..C5 to 256 channels, a top-down path adds each level to the ×2 up-sampled level above it, and a
3x3 conv smooths the finest merged map P2. "After upsampling the finest feature maps from FPN to the resolution
of the input image, a 3×3 and a 1×1 convolution layers are performed on them to regress heatmaps."

The pyramid spans every backbone level at stride 4 or more (C2..C5 for ResNet and DenseNet; VGG, whose
deepest block is at stride 16, gives three levels), chosen from the backbone's ``strides`` and sized from its
``channels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from farnet.models.backbone import Backbone
from farnet.models.layers import ConvBNReLU, Float32Conv2d
from farnet.models.interface import Heatmaps

FINEST_STRIDE = 4  # C2, the finest level of Lin et al.'s pyramid


class FeaturePyramidNetwork(nn.Module):
    """FPN on a backbone, with a full-resolution heatmap head.

    Args:
        backbone: a :class:`~farnet.models.backbone.Backbone`.
        num_landmarks: K.
        width: channels of the pyramid (256 in Lin et al. and the paper).
        head_width: channels of the 3x3 conv of the heatmap head (the paper does not say; 64 keeps this
            full-resolution conv affordable).

    Attributes:
        levels: indices into the backbone's levels that form the pyramid, finest first (C2..C5).
        lateral: the 1x1 lateral convs, finest first.
    """

    def __init__(self, backbone: Backbone, num_landmarks: int, width: int = 256, head_width: int = 64):
        super().__init__()
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
        self.backbone = backbone
        self.levels = [i for i, s in enumerate(backbone.strides) if s >= FINEST_STRIDE]
        if len(self.levels) < 2:
            raise ValueError(f"backbone strides {backbone.strides} give fewer than two levels at stride >= 4")
        # Plain convs without BN or ReLU in the pyramid, as in Lin et al. and torchvision's FeaturePyramidNetwork.
        self.lateral = nn.ModuleList(nn.Conv2d(backbone.channels[i], width, 1) for i in self.levels)
        self.smooth = nn.Conv2d(width, width, 3, padding=1)  # only P2 is used, so only P2 is smoothed
        # deviation: the head's 3x3 conv is conv + BN + ReLU (FARNet's `model.head: bn_relu`): the paper names
        # a 3x3 and a 1x1 conv only, and a plain 256-channel 3x3 at full resolution would cost ~600 GFLOP.
        self.head = nn.Sequential(ConvBNReLU(width, head_width, 3), Float32Conv2d(head_width, num_landmarks, 1))

    def forward(self, image: torch.Tensor) -> Heatmaps:
        """(B, 3, H, W) normalised image -> Heatmaps(fine=(B, K, H, W), coarse=None)."""
        feats = self.backbone(image)
        pyramid = [feats[i] for i in self.levels]  # C2..C5: (B, channels[i], H / strides[i], W / strides[i])
        p = self.lateral[-1](pyramid[-1])  # P5
        for lateral, c in zip(reversed(self.lateral[:-1]), reversed(pyramid[:-1])):
            # Lin et al.: nearest-neighbour ×2 up-sampling, then element-wise addition
            p = lateral(c) + F.interpolate(p, size=c.shape[-2:], mode="nearest")
        p2 = self.smooth(p)  # (B, 256, H/4, W/4)
        full = F.interpolate(p2, size=image.shape[-2:], mode="bilinear", align_corners=False)  # (B, 256, H, W)
        return Heatmaps(fine=self.head(full), coarse=None)
