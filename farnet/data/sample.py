"""The record every dataset reader returns: one image file and its landmarks in original pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Sample"]


@dataclass(frozen=True, eq=False)
class Sample:
    """One image and its landmarks, as every dataset reader returns it (nothing decoded).

    Attributes:
        image_id: e.g. "001".
        image_path: the stored image file.
        landmarks_px: (K, 2) float64 (x, y) in ORIGINAL pixel coordinates; read-only.
        original_wh: (W, H) of the original image the landmarks refer to.
        stored_wh: (W, H) of the stored file.
        spacing_mm: mm per original pixel, or None when the dataset has no physical unit.
        scale_xy: stored/original scale per axis, x_s = (x + 0.5)·scale − 0.5; None means
            stored_wh / original_wh (exact for any plain resize; the ISBI mirror needs 0.5 explicitly).
    """

    image_id: str
    image_path: Path
    landmarks_px: np.ndarray  # (K, 2) original px, float64
    original_wh: tuple[int, int]
    stored_wh: tuple[int, int]
    spacing_mm: float | None
    scale_xy: tuple[float, float] | None = None

    @property
    def stored_scale_xy(self) -> tuple[float, float]:
        """Stored/original scale per axis (x, y)."""
        if self.scale_xy is not None:
            return self.scale_xy
        return (self.stored_wh[0] / self.original_wh[0], self.stored_wh[1] / self.original_wh[1])
