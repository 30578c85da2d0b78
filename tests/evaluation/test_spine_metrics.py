"""Tests of farnet.evaluation.spine_metrics: fractional MSE and ρ, Cobb angles (AASCE reference method), SMAPE."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from farnet.evaluation.spine_metrics import (
    cobb_angles,
    fractional_mse,
    is_s_shaped,
    pearson_rho,
    smape,
    vertebra_midlines,
)

# ---- fractional MSE and Pearson rho ------------------------------------------------------------------------


def test_fractional_mse_hand_computed():
    true = np.array([[[10.0, 20.0], [30.0, 40.0]]])  # (1, 2, 2)
    pred = true + np.array([[[10.0, 0.0], [0.0, 0.0]]])  # one 10-px error in x
    # ((10/100)^2 + 0 + 0 + 0) / 4 = 0.0025
    assert fractional_mse(pred, true, (100, 200)) == pytest.approx(0.0025)
    # the paper's reading: a 10-px error on every coordinate of a 100x100 image is 0.010
    assert fractional_mse(true + 10, true, (100, 100)) == pytest.approx(0.010)
    # per-image sizes: y divided by H
    pred = true + np.array([[[0.0, 50.0], [0.0, 0.0]]])
    assert fractional_mse(pred, true, np.array([[100, 200]])) == pytest.approx(0.25**2 / 4)
    assert fractional_mse(true[0], true[0], (100, 100)) == 0.0  # a single (K, 2) image


def test_pearson_rho_hand_computed():
    true = np.array([[0.0, 0.0], [10.0, 20.0], [20.0, 40.0]])
    assert pearson_rho(true * 0.5 + 3, true, (100, 100)) == pytest.approx(1.0)  # any increasing linear map
    assert pearson_rho(-true, true, (100, 100)) == pytest.approx(-1.0)
    # fractions: x/W and y/H, flattened -> pred [0,0,.1,.1,.2,.2] vs true [0,0,.1,.2,.2,.4]
    p = np.array([0, 0, 0.1, 0.1, 0.2, 0.2])
    t = np.array([0, 0, 0.1, 0.2, 0.2, 0.4])
    expected = np.corrcoef(p, t)[0, 1]
    pred = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]])
    assert pearson_rho(pred, true, (100, 100)) == pytest.approx(expected)


def test_metric_input_checks():
    a = np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="pred and true must both be"):
        fractional_mse(a, a[:1], (10, 10))
    with pytest.raises(ValueError, match="image_wh must be"):
        fractional_mse(a, a, (0, 10))
    with pytest.raises(ValueError, match="undefined for constant"):
        pearson_rho(a, a, (10, 10))
    with pytest.raises(ValueError, match="NaN or inf"):
        fractional_mse(a + np.nan, a, (10, 10))


# ---- Cobb angles ----------------------------------------------------------------------------------------

def _spine(tilts_deg, centres_x=None, width=40.0, height=20.0, gap=30.0) -> np.ndarray:
    """(4·V, 2) corners of vertebrae rotated clockwise-on-screen by the given tilts (y down)."""
    points = []
    for v, tilt in enumerate(tilts_deg):
        cx = 200.0 if centres_x is None else centres_x[v]
        cy = 50.0 + v * gap
        t = math.radians(tilt)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        corners = np.array([[-width / 2, -height / 2], [width / 2, -height / 2],
                            [-width / 2, height / 2], [width / 2, height / 2]])  # TL, TR, BL, BR
        points.append(corners @ rot.T + (cx, cy))
    return np.concatenate(points)


def test_midlines_are_mean_of_endplates():
    spine = _spine([30.0, 0.0])
    np.testing.assert_allclose(vertebra_midlines(spine), [[40 * math.cos(math.radians(30)),
                                                           40 * math.sin(math.radians(30))], [40, 0]])


def test_cobb_two_tilted_vertebrae_c_curve():
    tilts = np.zeros(17)
    tilts[4], tilts[12] = 10.0, -15.0
    bowed = 200 + 40 * np.sin(np.linspace(0, np.pi, 17))  # every centre right of the end-to-end chord
    spine = _spine(tilts, centres_x=bowed)
    assert not is_s_shaped(spine)
    assert is_s_shaped(_spine(tilts))  # a straight column: tilted endplates lie on both sides of the chord
    angles = cobb_angles(spine, image_height=1000)
    # main: 10 - (-15) = 25 between vertebrae 4 and 12; then top vertebra (0°) vs 4 = 10°, bottom (0°) vs 12 = 15°
    np.testing.assert_allclose(angles, [25.0, 10.0, 15.0], atol=1e-6)


def test_cobb_s_curve_upper_and_lower_half():
    tilts = np.array([0, 5, 10, 15, 20, 10, 0, -10, -20, -10, 0, 10, 25, 15, 5, 0, 0], dtype=float)
    # centres swing left then right of the chord: S-shaped
    xs = 200 + 30 * np.sin(np.linspace(0, 2 * np.pi, 17))
    spine = _spine(tilts, centres_x=xs)
    assert is_s_shaped(spine)
    # most tilted pair: vertebra 8 (-20°) and 12 (+25°) -> 45°; lower endplates at y ≈ 300 and 420
    upper_half = cobb_angles(spine, image_height=2000)  # (300 + 420) < 2000: "upside"
    # angle 2: largest between vertebra 8 and 0..8 = |-20 - 20| = 40 (vertebra 4);
    # angle 3: largest between vertebra 12 and 12..16 = 25
    np.testing.assert_allclose(upper_half, [45.0, 40.0, 25.0], atol=1e-6)
    lower_half = cobb_angles(spine, image_height=500)  # (300 + 420) >= 500: "downside"
    # angle 3: largest between vertebra 4 (20°) and 0..4 = 20
    np.testing.assert_allclose(lower_half, [45.0, 40.0, 20.0], atol=1e-6)


def test_cobb_input_checks():
    with pytest.raises(ValueError, match=r"expected \(4·V, 2\)"):
        cobb_angles(np.zeros((67, 2)), 100)
    with pytest.raises(ValueError, match="image_height must be"):
        cobb_angles(_spine(np.zeros(17)), 0)
    flat = _spine(np.zeros(17))
    flat[4:8] = flat[4]  # vertebra 1 collapsed to a point
    with pytest.raises(ValueError, match="vertebra 1 has zero width"):
        cobb_angles(flat, 1000)


# ---- SMAPE ----------------------------------------------------------------------------------------------

def test_smape_hand_computed():
    # image 1: |12-10| + |5-5| + |0-2| = 4 over (22 + 10 + 2) = 34 ; image 2: perfect
    pred = np.array([[12.0, 5.0, 0.0], [20.0, 10.0, 5.0]])
    true = np.array([[10.0, 5.0, 2.0], [20.0, 10.0, 5.0]])
    assert smape(pred, true) == pytest.approx(100 * (4 / 34 + 0) / 2)
    assert smape(pred[0], true[0]) == pytest.approx(100 * 4 / 34)
    assert smape(np.zeros(3), np.zeros(3)) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        smape(-pred, true)
    with pytest.raises(ValueError, match="same"):
        smape(pred, true[:1])


# ---- mirror: the method against angles.csv ----------------------------------------------------------------

@pytest.mark.mirror
def test_cobb_of_true_landmarks_matches_angles_csv(mirror_root: Path):
    from farnet.data.spine import read_angles, read_spine

    root = mirror_root / "spine_boostnet"
    if not (root / "labels" / "test" / "angles.csv").is_file():
        pytest.skip("no spine_boostnet labels in the mirror")
    samples = read_spine(root, "test")
    table = read_angles(root, "test")
    ours = np.array([cobb_angles(s.landmarks_px, s.original_wh[1]) for s in samples])
    theirs = np.array([table[s.image_id] for s in samples])
    np.testing.assert_allclose(ours, theirs, atol=0.01)  # angles.csv keeps 5 significant digits
    assert smape(ours, theirs) < 0.01
