"""Metrics of the spine dataset: fractional MSE and Pearson ρ (paper Table 5), Cobb angles and SMAPE (AASCE).

The spine images have no physical unit, so the paper scores landmarks as fractions of the image: x / W and
y / H of the ORIGINAL image (docs/design.md §2.2). "MSE 0.010" then means a 10-pixel error in a 100×100 image.

Cobb angles follow the AASCE 2019 challenge's reference MATLAB code (``angleCal``), re-implemented from its
description, not copied. Each vertebra is represented by its mid-line: the vector from the midpoint of its left
side (top-left, bottom-left corners) to the midpoint of its right side (top-right, bottom-right), which is the
mean of its upper- and lower-endplate vectors. The angle between two vertebrae is the angle between their
mid-lines (0°-180°). Then:

1. main angle: the largest angle between any two vertebrae; call the pair (i, j), i above j;
2. the spine is "S-shaped" when the chain of endplate midpoints crosses the chord joining its first and last
   point (points on both sides of it), else "C-shaped";
3. C-shaped: angle 2 = angle between the top vertebra and i; angle 3 = angle between the bottom vertebra and j;
4. S-shaped, main curve in the upper half of the image (mean y of the lower endplates of i and j < H/2):
   angle 2 = largest angle between i and any vertebra above it, angle 3 = largest angle between j and any
   vertebra below it; main curve in the lower half: angle 2 as before (reached at vertebra k), angle 3 =
   largest angle between k and any vertebra above k.

The result (main, angle 2, angle 3) is the column order of the dataset's ``angles.csv``; the reference code
calls them PT, MT and TL/L. On the 609 published labels, :func:`cobb_angles` of the true landmarks reproduces
``angles.csv`` within 0.005° (the table's rounding).

SMAPE (AASCE): per image sum|p − t| / sum(p + t) over the three angles, averaged over images, in percent.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "fractional_coordinates",
    "fractional_mse",
    "pearson_rho",
    "vertebra_midlines",
    "is_s_shaped",
    "cobb_angles",
    "smape",
]

_CORNERS = 4


def _as_batch(pred_px, true_px, image_wh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K, 2) predictions and truths and (N, 2) sizes; single images (K, 2) / (2,) become N = 1."""
    pred = np.asarray(pred_px, dtype=np.float64)
    true = np.asarray(true_px, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim not in (2, 3) or pred.shape[-1] != 2 or pred.shape[-2] == 0:
        raise ValueError(f"pred and true must both be (N, K, 2) or (K, 2), got {pred.shape} and {true.shape}")
    if pred.ndim == 2:
        pred, true = pred[None], true[None]
    size = np.asarray(image_wh, dtype=np.float64)
    if size.ndim == 1:
        size = np.broadcast_to(size, (pred.shape[0], 2))
    if size.shape != (pred.shape[0], 2) or not (np.isfinite(size).all() and (size > 0).all()):
        raise ValueError(f"image_wh must be (2,) or ({pred.shape[0]}, 2) positive sizes (W, H), got {size.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise ValueError("landmarks contain NaN or inf")
    return pred, true, size


def fractional_coordinates(points_px: np.ndarray, image_wh) -> np.ndarray:
    """(..., K, 2) original pixels -> fractions (x / W, y / H); image_wh (2,) or (N, 2) for (N, K, 2)."""
    points = np.asarray(points_px, dtype=np.float64)
    size = np.asarray(image_wh, dtype=np.float64)
    return points / (size if size.ndim == 1 else size[:, None, :])


def fractional_mse(pred_px: np.ndarray, true_px: np.ndarray, image_wh) -> float:
    """Mean squared error of fractional coordinates (paper Table 5).

    Args:
        pred_px: (N, K, 2) or (K, 2) predicted (x, y) in original pixels.
        true_px: the ground truth, same shape.
        image_wh: (N, 2) or (2,) original (W, H) per image.

    Returns:
        mean over images, landmarks and both axes of ((pred − true) / (W, H))².
    """
    pred, true, size = _as_batch(pred_px, true_px, image_wh)
    diff = fractional_coordinates(pred - true, size)  # (N, K, 2)
    return float(np.mean(diff**2))


def pearson_rho(pred_px: np.ndarray, true_px: np.ndarray, image_wh) -> float:
    """Pearson correlation of the flattened predicted and true fractional coordinates (paper Table 5).

    Args: as :func:`fractional_mse`.

    Raises:
        ValueError: either set of coordinates is constant (ρ undefined).
    """
    pred, true, size = _as_batch(pred_px, true_px, image_wh)
    p = fractional_coordinates(pred, size).ravel()
    t = fractional_coordinates(true, size).ravel()
    p, t = p - p.mean(), t - t.mean()
    denom = np.sqrt((p**2).sum() * (t**2).sum())
    if denom == 0:
        raise ValueError("Pearson's rho is undefined for constant coordinates")
    return float((p * t).sum() / denom)


def _check_spine(landmarks_px) -> np.ndarray:
    points = np.asarray(landmarks_px, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] % _CORNERS or points.shape[0] < 2 * _CORNERS:
        raise ValueError(f"expected (4·V, 2) vertebra corners with V >= 2, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or inf")
    return points


def vertebra_midlines(landmarks_px: np.ndarray) -> np.ndarray:
    """(V, 2) per vertebra: midpoint of its right side minus midpoint of its left side.

    Args:
        landmarks_px: (4·V, 2), corners per vertebra in the order top-left, top-right, bottom-left,
            bottom-right.
    """
    corners = _check_spine(landmarks_px).reshape(-1, _CORNERS, 2)  # (V, 4, 2)
    left = (corners[:, 0] + corners[:, 2]) / 2
    right = (corners[:, 1] + corners[:, 3]) / 2
    return right - left


def _endplate_midpoints(points: np.ndarray) -> np.ndarray:
    """(2V, 2): midpoints of each vertebra's upper then lower endplate, top to bottom."""
    return (points[0::2] + points[1::2]) / 2


def is_s_shaped(landmarks_px: np.ndarray) -> bool:
    """The reference code's S-curve test: do the endplate midpoints lie on both sides of the chord from the
    first to the last one?

    As in the reference, the last two midpoints are left out of the test (the last is on the chord anyway).
    The reference divides by the chord's x and y extents; the sign test here uses the equivalent cross product,
    which also handles a vertical or horizontal chord.
    """
    mid = _endplate_midpoints(_check_spine(landmarks_px))  # (2V, 2)
    chord = mid[0] - mid[-1]
    rel = mid[:-2] - mid[-1]
    side = chord[0] * rel[:, 1] - chord[1] * rel[:, 0]
    return bool((side > 0).any() and (side < 0).any())


def _pairwise_angles_deg(midlines: np.ndarray) -> np.ndarray:
    """(V, V) angles in degrees between vertebra mid-lines."""
    norms = np.linalg.norm(midlines, axis=1)
    if (norms == 0).any():
        raise ValueError(f"vertebra {int(np.argmin(norms))} has zero width: its left and right sides coincide")
    unit = midlines / norms[:, None]
    # The reference rounds the cosines to 8 decimals, which also makes the matrix exactly symmetric.
    cosines = np.clip(np.round(unit @ unit.T, 8), -1.0, 1.0)
    return np.degrees(np.arccos(cosines))


def cobb_angles(landmarks_px: np.ndarray, image_height: float) -> np.ndarray:
    """The three Cobb angles of one spine from its vertebra corners (AASCE 2019 reference method).

    Args:
        landmarks_px: (68, 2) (x, y) ORIGINAL pixels, 4 corners per vertebra (top-left, top-right, bottom-left,
            bottom-right), vertebrae top to bottom.
        image_height: H of the original image; decides, for an S-shaped spine, whether the main curve lies in
            the upper or the lower half.

    Returns:
        (3,) degrees: (main, angle 2, angle 3) in the column order of ``angles.csv`` (see the module text).
    """
    points = _check_spine(landmarks_px)
    if not np.isfinite(image_height) or image_height <= 0:
        raise ValueError(f"image_height must be a positive number, got {image_height!r}")
    angles = _pairwise_angles_deg(vertebra_midlines(points))  # (V, V)
    last = angles.shape[0] - 1
    upper = int(np.argmax(angles.max(axis=0)))  # first vertebra of the most tilted pair
    lower = int(np.argmax(angles[:, upper]))  # its partner (first index reaching the maximum)
    main = angles[upper, lower]
    if not is_s_shaped(points):
        return np.array([main, angles[0, upper], angles[last, lower]])
    above = angles[upper, : upper + 1]  # vertebrae 0..upper
    k = int(np.argmax(above))
    lower_endplates = _endplate_midpoints(points)[1::2]  # (V, 2)
    if lower_endplates[upper, 1] + lower_endplates[lower, 1] < image_height:  # main curve in the upper half
        return np.array([main, above[k], angles[lower, lower:].max()])
    return np.array([main, above[k], angles[k, : k + 1].max()])


def smape(pred_angles: np.ndarray, true_angles: np.ndarray) -> float:
    """Symmetric mean absolute percentage error of Cobb angles (AASCE 2019), in percent.

    Args:
        pred_angles: (N, 3) or (3,) predicted angles in degrees (non-negative).
        true_angles: the reference angles, same shape.

    Returns:
        100 · mean over images of sum_j |p_j − t_j| / sum_j (p_j + t_j); an image whose six angles are all zero
        counts as 0 (a perfect prediction).
    """
    pred = np.atleast_2d(np.asarray(pred_angles, dtype=np.float64))
    true = np.atleast_2d(np.asarray(true_angles, dtype=np.float64))
    if pred.shape != true.shape or pred.shape[0] == 0:
        raise ValueError(f"pred and true must have the same (N, 3) shape, got {pred.shape} and {true.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise ValueError("angles contain NaN or inf")
    if (pred < 0).any() or (true < 0).any():
        raise ValueError("Cobb angles must be non-negative")
    num = np.abs(pred - true).sum(axis=1)
    den = (pred + true).sum(axis=1)
    ratio = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return float(100.0 * ratio.mean())
