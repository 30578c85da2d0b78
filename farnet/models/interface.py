"""The inference chain, written once: uint8 images -> normalised input -> network -> the heatmaps to decode.

Evaluation (:func:`farnet.evaluation.loop.predict_landmarks`), ``farnet export`` and ``farnet bench`` all run a network
through :class:`HeatmapNetwork`; training normalises its batches with the same :func:`normalize`. The network's
outputs are :class:`Heatmaps`, one per supervised head; FARNet and the baselines return them, and this module
imports no network, so the baselines can depend on it without a cycle.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from farnet.core.fastpath import autocast, device_constant

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Heatmaps(NamedTuple):
    """Supervised outputs of a landmark network; ``None`` where a variant has no such head."""

    fine: torch.Tensor | None  # (B, K, H, W)
    coarse: torch.Tensor | None  # (B, K, H/2, W/2)


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) uint8 -> (B, 3, H, W) float: /255, grey to 3 channels, ImageNet mean/std (docs/design.md §2.2)."""
    x = images_u8.float().div_(255.0)
    mean = device_constant(IMAGENET_MEAN, x.device, x.dtype).view(1, 3, 1, 1)
    std = device_constant(IMAGENET_STD, x.device, x.dtype).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def final_heatmaps(out: Heatmaps, size_hw: tuple[int, int]) -> torch.Tensor:
    """The heatmaps to decode, at the input resolution: FR's, else MSFA's up-sampled (MSFA-only variant)."""
    if out.fine is not None:
        return out.fine
    # deviation: the paper does not say how the MSFA-only row of Table 2 is decoded; its half-resolution
    # heatmaps are up-sampled bilinearly to the input size and decoded like FR's.
    return F.interpolate(out.coarse, size=size_hw, mode="bilinear", align_corners=False)


class HeatmapNetwork(nn.Module):
    """A landmark network with its input normalisation: uint8 (B, 1, H, W) -> fp32 heatmaps (B, K, H, W).

    Args:
        model: returns :class:`Heatmaps`.
        precision: "fp32" or "bf16" (autocast; the heads' last convs stay fp32, :mod:`farnet.models.layers`).
        channels_last: the input's memory format.
        cache_enabled: autocast's weight-cast cache (off for CUDA-graph capture).
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", channels_last: bool = False,
                 cache_enabled: bool = True):
        super().__init__()
        self.model = model
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.cache_enabled = cache_enabled

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) uint8 (``image``: the ONNX input's name) -> (B, K, H, W) fp32."""
        heads = self.heads(image)
        return final_heatmaps(heads, tuple(image.shape[-2:]))

    def heads(self, image: torch.Tensor) -> Heatmaps:
        """(B, 1, H, W) uint8 -> every supervised head's heatmaps, fp32 (``None`` where the network has none)."""
        x = normalize(image).contiguous(memory_format=self.memory_format)
        with autocast(x.device, self.precision, cache_enabled=self.cache_enabled):
            heads = self.model(x)
        return Heatmaps(*(None if h is None else h.float() for h in heads))
