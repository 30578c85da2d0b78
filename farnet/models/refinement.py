"""Feature refinement (FR), paper §3.1.2: heatmaps at the input's full resolution.

A conv on the input image gives C0 (32 channels). It is concatenated with the up-sampled MSFA features U1 and,
in the guided FR, the up-sampled MSFA heatmaps (96 + K = 115 channels for DenseNet-121 and K = 19); a 3x3 and a
1x1 conv then regress K full-resolution heatmaps. As in the authors' network the 3x3 conv is plain and keeps the
115 channels (bias, no BN, no ReLU); ``head="bn_relu"`` is a lighter option (conv + BN + ReLU to 64 channels).
The naive FR* of Table 2 drops the MSFA heatmaps (and the MSFA supervision). With a VGG backbone the first VGG
block is full resolution and replaces FR's input conv (paper §4.3).
"""

from __future__ import annotations

import torch
from torch import nn

from farnet.models.layers import ConvBiasBNReLU, heatmap_head, upsample_to


class FeatureRefinement(nn.Module):
    """FR module.

    Args:
        feature_channels: channels of the MSFA features U1.
        num_landmarks: K.
        guided: concatenate the up-sampled MSFA heatmaps (FR) or not (FR*).
        c0_channels: channels of a C0 given by the backbone (VGG); ``None`` builds FR's own input conv.
        input_kernel: kernel of FR's input conv. The paper says 3x3; the authors' code uses 1x1.
        image_channels: channels of the input image.
        c0_width: output channels of FR's own input conv (32 in the paper).
        head: the head's style, "authors" or "bn_relu" (:func:`~farnet.models.layers.heatmap_head`).
    """

    def __init__(self, feature_channels: int, num_landmarks: int, guided: bool = True, c0_channels: int | None = None,
                 input_kernel: int = 3, image_channels: int = 3, c0_width: int = 32, head: str = "authors"):
        super().__init__()
        self.guided = guided
        # deviation: FR's input conv has the paper's 3x3 kernel (`model.fr_input_kernel`); the authors' code
        # uses 1x1, as `fr_input_kernel: 1` does. Both are conv + BN + ReLU, as in the authors' network.
        self.input_conv = None
        if c0_channels is None:
            self.input_conv = ConvBiasBNReLU(image_channels, c0_width, input_kernel)
            c0_channels = c0_width
        concat = feature_channels + c0_channels + (num_landmarks if guided else 0)
        self.head = heatmap_head(concat, num_landmarks, head)

    def forward(self, image: torch.Tensor, features: torch.Tensor, coarse: torch.Tensor | None = None,
                c0: torch.Tensor | None = None) -> torch.Tensor:
        """(B,3,H,W) image, (B,F,H/2,W/2) U1, (B,K,H/2,W/2) MSFA heatmaps -> (B,K,H,W) heatmaps."""
        if c0 is None:
            c0 = self.input_conv(image)
        parts = [upsample_to(features, c0), c0]
        if self.guided:
            if coarse is None:
                raise ValueError("guided feature refinement needs the MSFA heatmaps")
            parts.append(upsample_to(coarse, c0).to(c0.dtype))  # fp32 heatmaps join bf16 features under autocast
        return self.head(torch.cat(parts, dim=1))
