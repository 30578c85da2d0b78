"""How sure a number is (beyond the paper): bootstrap intervals over test images, paired differences between
two runs on the same images, and the verdict a difference earns.

The landmarks of one image are not independent (one radiograph's contrast and anatomy, one pass of the
network), so every interval resamples whole images, never landmarks: ``scipy.stats.bootstrap`` (BCa, 9,999
resamples, a fixed seed) over one value per image. MRE and SDR are means over images of per-image values (every
image has all K landmarks), so their intervals are intervals of a mean; a paired difference is the mean of the
per-image differences between two runs on the same images. A difference is **resolved** when its interval
excludes 0 and, where seed replicates give the spread of the network's own training noise, it also exceeds
what two runs that differ only in their seed would differ by (1.96·√2·SD between seeds: the 95 % range of such
a difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0
#: seeds' spread → the 95 % range of the difference between two runs that differ only in their seed
SEED_RANGE = 1.96 * math.sqrt(2)
VERDICTS = ("better", "worse", "not resolved")


def image_errors(predictions: pd.DataFrame, split: str, decode: str = "argmax",
                 column: str = "error_mm") -> tuple[list[str], np.ndarray]:
    """The (N, K) radial errors of one split and decoder, one row per image (sorted by id).

    Args:
        predictions: a run's predictions (:meth:`farnet.report.results.Results.predictions`).
        column: ``error_mm`` or ``error_px``.

    Raises:
        ValueError: the split has no rows for ``decode``, or an image lacks a landmark.
    """
    rows = predictions[(predictions["split"] == split) & (predictions["decode"] == decode)]
    if rows.empty:
        raise ValueError(f"no {decode} predictions for split {split!r}")
    table = rows.pivot_table(index="image_id", columns="landmark", values=column, aggfunc="first")
    if table.isna().to_numpy().any():
        raise ValueError(f"split {split!r}: an image lacks a landmark's {column}")
    return [str(i) for i in table.index], table.to_numpy(dtype=np.float64)


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the mean of one value per image and its 95 % BCa bootstrap interval.

    A sample with no spread (a model compared with itself) has the degenerate interval (mean, mean).
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2 or np.ptp(values) == 0:
        return mean, mean, mean
    result = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                             method="BCa", rng=np.random.default_rng(SEED))
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def statistic_interval(statistic: Callable[[np.ndarray], float], n_images: int) -> tuple[float, float, float]:
    """(value, low, high) of a statistic that is not a mean over images (Pearson's ρ), through the image
    indices it is given: 95 % percentile bootstrap over images."""
    index = np.arange(n_images)
    value = float(statistic(index))
    result = stats.bootstrap((index,), lambda i: statistic(i.astype(int)), vectorized=False, paired=False,
                             confidence_level=CONFIDENCE, n_resamples=RESAMPLES // 5, method="percentile",
                             rng=np.random.default_rng(SEED))
    return value, float(result.confidence_interval.low), float(result.confidence_interval.high)


def per_image_mre(errors: np.ndarray) -> np.ndarray:
    """(N,) each image's mean radial error over its landmarks."""
    return errors.mean(axis=1)


def per_image_sdr(errors: np.ndarray, radius: float) -> np.ndarray:
    """(N,) each image's percentage of landmarks within ``radius``."""
    return 100.0 * (errors <= radius).mean(axis=1)


def error_intervals(errors: np.ndarray, radius: float = 2.0) -> dict[str, tuple[float, float, float]]:
    """MRE and SDR at ``radius`` with their 95 % intervals over images: ``{"MRE": (mean, low, high), "2mm": …}``."""
    return {"MRE": mean_interval(per_image_mre(errors)),
            f"{radius:g}mm": mean_interval(per_image_sdr(errors, radius))}


def paired_difference(errors: np.ndarray, ids: Sequence[str], reference: np.ndarray,
                      reference_ids: Sequence[str]) -> tuple[float, float, float]:
    """MRE of a run minus the reference run's on the same images, with its 95 % interval (per-image pairs).

    Raises:
        ValueError: the two runs were not tested on the same images.
    """
    if list(ids) != list(reference_ids):
        raise ValueError(f"paired runs need the same test images ({len(ids)} vs {len(reference_ids)}, "
                         "or different ids)")
    return mean_interval(per_image_mre(errors) - per_image_mre(reference))


def verdict(difference: float, low: float, high: float, seed_sd: float | None = None) -> str:
    """"better" (lower error) or "worse" when the interval excludes 0 and, given the SD between seeds, the
    difference also exceeds ``SEED_RANGE`` times it; else "not resolved"."""
    if not (low > 0 or high < 0):
        return "not resolved"
    if seed_sd is not None and math.isfinite(seed_sd) and abs(difference) <= SEED_RANGE * seed_sd:
        return "not resolved"
    return "better" if difference < 0 else "worse"


def format_interval(low: float, high: float, spec: str = ".2f") -> str:
    """``"1.72–1.90"`` (an en dash; each end formatted by ``spec``, e.g. ``".3g"`` for small numbers such as
    the spine's MSE), or ``""`` when either end is missing."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f"{low:{spec}}–{high:{spec}}"


def inside(value: float | None, low: float, high: float) -> str:
    """Whether ``value`` (the paper's) lies inside [low, high]: "yes", "no", or "" when it is missing."""
    if value is None or not math.isfinite(value):
        return ""
    return "yes" if low <= value <= high else "no"
