"""FARNet: backbone + MSFA + FR with coarse-to-fine supervision (paper §3.1, Fig. 2).

One class covers the network and its Table 2 variants through options:
``fusion`` ("concat" = MSFA, "add" = MSFA(+)) and ``refinement`` ("guided" = MSFA+FR with coarse-to-fine
supervision, "naive" = MSFA+FR*, "none" = MSFA alone). The forward pass returns every supervised head:
``fine`` (B, K, H, W) from FR and ``coarse`` (B, K, H/2, W/2) from MSFA, either of which may be absent.
"""

from __future__ import annotations

import torch
from torch import nn

from farnet.models.backbone import Backbone
from farnet.models.interface import Heatmaps
from farnet.models.msfa import MultiScaleFeatureAggregation
from farnet.models.refinement import FeatureRefinement

REFINEMENTS = ("guided", "naive", "none")


class FARNet(nn.Module):
    """Feature aggregation and refinement network.

    Args:
        backbone: a :class:`~farnet.models.backbone.Backbone`.
        num_landmarks: K.
        fusion: "concat" (MSFA) or "add" (MSFA(+)).
        refinement: "guided" (FR), "naive" (FR*: no MSFA supervision, no MSFA heatmaps) or "none" (MSFA only).
        fr_input_kernel: kernel of FR's input conv (paper 3, authors' code 1).
        head: style of both heatmap heads, "authors" (plain 3x3 conv, then 1x1) or "bn_relu"
            (:func:`~farnet.models.layers.heatmap_head`).
    """

    def __init__(self, backbone: Backbone, num_landmarks: int, fusion: str = "concat", refinement: str = "guided",
                 fr_input_kernel: int = 3, head: str = "authors"):
        super().__init__()
        if refinement not in REFINEMENTS:
            raise ValueError(f"refinement {refinement!r} is not one of {', '.join(REFINEMENTS)}")
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
        self.backbone = backbone
        self.num_landmarks = num_landmarks
        self.refinement = refinement
        full_res = backbone.has_full_resolution
        levels = backbone.channels[1:] if full_res else backbone.channels  # C1..Cn
        self.msfa = MultiScaleFeatureAggregation(levels, None if refinement == "naive" else num_landmarks, fusion,
                                                 head=head)
        self.fr = None
        if refinement != "none":
            self.fr = FeatureRefinement(self.msfa.out_channels, num_landmarks, guided=refinement == "guided",
                                        c0_channels=backbone.channels[0] if full_res else None,
                                        input_kernel=fr_input_kernel, head=head)
        elif full_res:
            raise ValueError("a full-resolution (VGG) backbone needs the FR module: its first block is C0")

    def forward(self, image: torch.Tensor) -> Heatmaps:
        """(B, 3, H, W) normalised image -> :class:`Heatmaps`."""
        feats = self.backbone(image)
        c0 = None
        if self.backbone.has_full_resolution:
            c0, feats = feats[0], feats[1:]
        features, coarse = self.msfa(feats)
        fine = self.fr(image, features, coarse, c0) if self.fr is not None else None
        return Heatmaps(fine=fine, coarse=coarse)
