"""Bootstrap intervals over images, paired differences and verdicts (farnet.report.intervals), by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from farnet.report import intervals
from fake_results import predictions


def test_interval_of_a_mean_matches_the_textbook_on_a_large_sample():
    """For 400 values the BCa interval of the mean is close to mean ± 1.96·s/√n (the normal-theory interval)."""
    values = np.random.default_rng(1).normal(2.0, 1.0, 400)
    mean, low, high = intervals.mean_interval(values)
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert mean == pytest.approx(values.mean())
    assert low == pytest.approx(mean - half, abs=0.02) and high == pytest.approx(mean + half, abs=0.02)


def test_interval_on_a_tiny_known_sample():
    """Four images: the interval lies within the sample's range, around its mean; a constant sample has no
    spread, so its interval is the point itself; the same seed gives the same interval."""
    values = np.array([1.0, 2.0, 3.0, 4.0])
    mean, low, high = intervals.mean_interval(values)
    assert mean == 2.5 and 1.0 <= low < 2.5 < high <= 4.0
    assert intervals.mean_interval(values) == (mean, low, high)
    assert intervals.mean_interval(np.full(5, 1.5)) == (1.5, 1.5, 1.5)


def test_mre_and_sdr_are_means_of_per_image_values():
    errors = np.array([[1.0, 3.0], [2.0, 2.0], [0.5, 5.0]])  # 3 images, 2 landmarks
    assert intervals.per_image_mre(errors).tolist() == [2.0, 2.0, 2.75]
    assert intervals.per_image_sdr(errors, 2.0).tolist() == [50.0, 100.0, 50.0]
    ranges = intervals.error_intervals(errors)
    assert ranges["MRE"][0] == pytest.approx(errors.mean()) and ranges["2mm"][0] == pytest.approx(100 * 4 / 6)


def test_a_model_against_itself_differs_by_nothing():
    ids, errors = [f"{i:03d}" for i in range(20)], np.random.default_rng(2).gamma(2.0, 1.0, (20, 19))
    difference, low, high = intervals.paired_difference(errors, ids, errors, ids)
    assert (difference, low, high) == (0.0, 0.0, 0.0)
    assert intervals.verdict(difference, low, high) == "not resolved"


def test_a_shifted_copy_is_resolved_with_the_right_sign():
    """A run 0.3 mm worse on every image (plus noise) is "worse"; the reverse comparison "better"; a seed spread
    larger than the shift leaves it "not resolved"."""
    rng = np.random.default_rng(3)
    ids, errors = [f"{i:03d}" for i in range(150)], rng.gamma(2.0, 0.8, (150, 19))
    worse = errors + 0.3 + rng.normal(0.0, 0.2, errors.shape)
    difference, low, high = intervals.paired_difference(worse, ids, errors, ids)
    assert difference == pytest.approx(0.3, abs=0.03) and 0 < low < difference < high
    assert intervals.verdict(difference, low, high) == "worse"
    assert intervals.verdict(*intervals.paired_difference(errors, ids, worse, ids)) == "better"
    assert intervals.verdict(difference, low, high, seed_sd=0.2) == "not resolved"  # 0.3 < 1.96·√2·0.2
    assert intervals.verdict(difference, low, high, seed_sd=0.05) == "worse"
    with pytest.raises(ValueError, match="same test images"):
        intervals.paired_difference(worse, ids[::-1], errors, ids)


def test_image_errors_are_one_row_per_image_whatever_the_row_order():
    preds = predictions({"test1": [[1.0, 2.0], [3.0, 4.0]], "test2": [[9.0, 9.0]]})
    shuffled = preds.sample(frac=1.0, random_state=0)
    ids, errors = intervals.image_errors(shuffled, "test1")
    assert ids == ["001", "002"] and errors.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match="no subpixel predictions for split 'test1'"):
        intervals.image_errors(preds, "test1", "subpixel")
    with pytest.raises(ValueError, match="lacks a landmark"):
        intervals.image_errors(pd.concat([preds.iloc[:1], preds.iloc[2:]]), "test1")


def test_formatting_and_the_papers_number_inside():
    assert intervals.format_interval(1.234, 1.9) == "1.23–1.90"
    assert intervals.format_interval(math.nan, 1.0) == ""
    assert intervals.inside(1.12, 1.0, 1.2) == "yes" and intervals.inside(1.3, 1.0, 1.2) == "no"
    assert intervals.inside(None, 1.0, 1.2) == ""


def test_an_interval_of_pearsons_rho_over_images():
    rng = np.random.default_rng(4)
    true = rng.uniform(0, 1, (30, 8))
    pred = true + rng.normal(0, 0.05, true.shape)
    rho, low, high = intervals.statistic_interval(
        lambda i: float(np.corrcoef(pred[i].ravel(), true[i].ravel())[0, 1]), 30)
    assert low <= rho <= high and 0.9 < low and high < 1.0
