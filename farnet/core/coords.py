"""The one coordinate convention of the project: (x, y), 0-based, pixel centres at integers.

Resizing an image by a factor s along an axis maps a coordinate as x' = (x + 0.5)·s − 0.5: the edges of the
image (−0.5 and W − 0.5) map onto each other. Every change of resolution (original ↔ stored ↔ network input ↔
heatmap) goes through :func:`rescale_points`.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Points = TypeVar("Points", np.ndarray, torch.Tensor)


def rescale_points(points_xy: Points, scale_xy) -> Points:
    """x' = (x + 0.5)·s − 0.5 for (..., 2) points and a scale (s_x, s_y) broadcast against them (numpy or torch)."""
    return (points_xy + 0.5) * scale_xy - 0.5
