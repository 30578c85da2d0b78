"""Landmark metrics of the ISBI 2015 challenge (paper §4.1.1): radial error, MRE ± SD and SDR, in mm.

Errors are measured in the original image's pixels and converted with its pixel spacing (0.1 mm for ISBI).
MRE and SD pool every landmark of every image; SDR at radius r is the percentage of landmarks whose radial
error is at most r mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def radial_error_mm(pred_xy: np.ndarray, true_xy: np.ndarray, spacing_mm: float | np.ndarray) -> np.ndarray:
    """Euclidean distance between (N, K, 2) predictions and ground truth in pixels, times the spacing.

    Args:
        spacing_mm: one spacing, or one per image (N,).

    Returns:
        (N, K) errors in mm.
    """
    pred_xy = np.asarray(pred_xy, dtype=np.float64)
    true_xy = np.asarray(true_xy, dtype=np.float64)
    if pred_xy.shape != true_xy.shape or pred_xy.shape[-1] != 2:
        raise ValueError(f"prediction shape {pred_xy.shape} and ground truth shape {true_xy.shape} must match (..., 2)")
    dist_px = np.linalg.norm(pred_xy - true_xy, axis=-1)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.ndim == 1:
        spacing = spacing[:, None]
    return dist_px * spacing


def successful_detection_rate(errors_mm: np.ndarray, radius_mm: float) -> float:
    """Percentage of errors <= radius_mm."""
    errors_mm = np.asarray(errors_mm)
    return float(100.0 * np.mean(errors_mm <= radius_mm))


OUTLIER_MM = 10.0  # a detection this far off is a gross error (reported as the outlier rate)


def summarize(errors_mm: np.ndarray, radii_mm: Sequence[float], outlier_mm: float | None = None) -> dict:
    """MRE, SD (sample SD over all landmarks of all images) and SDR at each radius for (N, K) errors; with
    ``outlier_mm``, also ``outliers_pct``: the % of landmarks farther off than that."""
    flat = np.asarray(errors_mm, dtype=np.float64).ravel()
    if flat.size == 0:
        raise ValueError("no errors to summarize")
    if not np.all(np.isfinite(flat)):
        raise ValueError("errors contain NaN or inf")
    return {
        "n_images": int(np.asarray(errors_mm).shape[0]),
        "mre_mm": float(flat.mean()),
        "sd_mm": float(flat.std(ddof=1)) if flat.size > 1 else 0.0,
        "sdr": {f"{r:.1f}": successful_detection_rate(flat, r) for r in radii_mm},
    } | ({} if outlier_mm is None else {"outliers_pct": float(100.0 * np.mean(flat > outlier_mm))})


def per_landmark(errors_mm: np.ndarray, names: Sequence[str], radii_mm: Sequence[float]) -> pd.DataFrame:
    """One row per landmark: MRE, SD and SDR at each radius over the images."""
    errors_mm = np.asarray(errors_mm, dtype=np.float64)
    rows = []
    for k, name in enumerate(names):
        e = errors_mm[:, k]
        row = {"landmark": k, "name": name, "mre_mm": e.mean(), "sd_mm": e.std(ddof=1) if e.size > 1 else 0.0}
        row.update({f"sdr_{r:.1f}": successful_detection_rate(e, r) for r in radii_mm})
        rows.append(row)
    return pd.DataFrame(rows)
