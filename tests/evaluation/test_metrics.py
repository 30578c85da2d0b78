import numpy as np
import pytest

from farnet.evaluation.metrics import per_landmark, radial_error_mm, successful_detection_rate, summarize


def test_3_4_5_triangle_at_a_tenth_of_a_mm():
    err = radial_error_mm(np.array([[[3.0, 4.0]]]), np.array([[[0.0, 0.0]]]), 0.1)
    assert err.shape == (1, 1)
    assert err[0, 0] == pytest.approx(0.5)


def test_per_image_spacing():
    pred = np.array([[[3.0, 4.0]], [[6.0, 8.0]]])
    true = np.zeros((2, 1, 2))
    assert radial_error_mm(pred, true, np.array([0.1, 1.0])).ravel().tolist() == pytest.approx([0.5, 10.0])


def test_summary_by_hand():
    errors = np.array([[1.0, 2.0], [3.0, 5.0]])
    s = summarize(errors, [2.0, 4.0])
    assert s["n_images"] == 2
    assert s["mre_mm"] == pytest.approx(2.75)
    assert s["sd_mm"] == pytest.approx(np.std([1, 2, 3, 5], ddof=1))
    assert s["sdr"] == {"2.0": pytest.approx(50.0), "4.0": pytest.approx(75.0)}
    assert successful_detection_rate(errors, 2.0) == 50.0  # at the radius counts as a success


def test_per_landmark_table():
    errors = np.array([[1.0, 2.0], [3.0, 5.0]])
    table = per_landmark(errors, ["sella", "nasion"], [2.0])
    assert table["name"].tolist() == ["sella", "nasion"]
    assert table["mre_mm"].tolist() == pytest.approx([2.0, 3.5])
    assert table["sdr_2.0"].tolist() == pytest.approx([50.0, 50.0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="must match"):
        radial_error_mm(np.zeros((1, 2, 2)), np.zeros((1, 3, 2)), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        summarize(np.array([[np.nan]]), [2.0])
    with pytest.raises(ValueError, match="no errors"):
        summarize(np.zeros((0, 19)), [2.0])


def test_outlier_rate_counts_errors_beyond_the_threshold():
    errors = np.array([[1.0, 10.0], [10.5, 30.0]])
    assert summarize(errors, [2.0], outlier_mm=10.0)["outliers_pct"] == pytest.approx(50.0)  # 10.0 is not beyond
    assert "outliers_pct" not in summarize(errors, [2.0])
