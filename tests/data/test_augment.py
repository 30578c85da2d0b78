"""Tests of farnet.data.augment: image and landmarks move exactly together, reproducibly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from farnet.data.augment import (
    AUGMENTATIONS,
    AugmentParams,
    LandmarkAugmentation,
    affine_points,
    augmentation_generator,
    build_augmentation,
)

H, W = 72, 56


def _point_image(x: int, y: int, value: int = 120) -> torch.Tensor:
    image = torch.zeros(1, H, W, dtype=torch.uint8)
    image[0, y, x] = value
    return image


@pytest.mark.parametrize("kind", ["payer", "boostnet"])
@pytest.mark.parametrize("seed", range(6))
def test_bright_pixel_follows_its_landmark(kind, seed):
    """Transform a point image: the brightest output pixel is within 1 px of the transformed landmark."""
    x, y = 25, 40
    points = torch.tensor([[float(x), float(y)], [3.0, 5.0]])
    image, moved = build_augmentation(kind)(_point_image(x, y), points, augmentation_generator(seed, 0, 0))
    assert image.shape == (1, H, W) and image.dtype == torch.uint8
    assert moved.shape == (2, 2) and moved.dtype == torch.float32
    peak_y, peak_x = divmod(int(image[0].argmax()), W)
    assert math.hypot(peak_x - moved[0, 0].item(), peak_y - moved[0, 1].item()) <= 1.0
    assert not torch.equal(moved, points)  # it did move


def _blob(cx: float, cy: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    blob = 250 * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.5**2))
    return blob.round().to(torch.uint8)[None], xx, yy


def _centroid(image: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> tuple[float, float]:
    weights = image[0].to(torch.float64)
    return float((weights * xx).sum() / weights.sum()), float((weights * yy).sum() / weights.sum())


@pytest.mark.parametrize("seed", range(4))
def test_blob_centroid_follows_the_landmark(seed):
    """A smooth blob at a sub-pixel position: its centroid lands on the transformed point (measured: < 0.01 px)."""
    aug = build_augmentation("payer", intensity_scale_range=(1.0, 1.0), max_intensity_shift=0.0)
    cx, cy = 27.3, 33.8
    image, xx, yy = _blob(cx, cy)
    out, moved = aug(image, torch.tensor([[cx, cy]], dtype=torch.float64), augmentation_generator(seed, 1, 2))
    assert moved.dtype == torch.float64
    centroid = _centroid(out, xx, yy)
    assert abs(centroid[0] - moved[0, 0]) < 0.03 and abs(centroid[1] - moved[0, 1]) < 0.03


def test_no_half_pixel_slip_at_large_rotation_and_scale():
    """With θ = 15°, s = 1.15 a half-pixel convention error would move the point by (I − sR)·(½, ½) ≈ (0.09, −0.20) px."""
    cx, cy = 30.2, 36.7
    image, xx, yy = _blob(cx, cy)
    params = AugmentParams(15.0, 1.15, (3.3, -2.7), 1.0, 0.0)
    out, moved = LandmarkAugmentation().apply(image, torch.tensor([[cx, cy]], dtype=torch.float64), params)
    centroid = _centroid(out, xx, yy)
    assert abs(centroid[0] - moved[0, 0]) < 0.03 and abs(centroid[1] - moved[0, 1]) < 0.03


def test_points_follow_the_documented_formula():
    """torchvision's KeyPoints path agrees with p' = c + s·R(θ)·(p − c) + t in the project's convention."""
    aug = build_augmentation("boostnet")
    points = torch.tensor([[0.0, 0.0], [W - 1.0, H - 1.0], [10.5, 60.25], [-20.0, 100.0]], dtype=torch.float64)
    for seed in range(5):
        params = aug.sample((H, W), augmentation_generator(seed, 0, 0))
        _, moved = aug.apply(torch.zeros(1, H, W, dtype=torch.uint8), points, params)
        np.testing.assert_allclose(moved.numpy(), affine_points(points.numpy(), params, (H, W)), atol=1e-9)


def test_formula_hand_computed():
    """90° about the centre: a point right of the centre goes below it (y down, clockwise on screen)."""
    centre = ((W - 1) / 2, (H - 1) / 2)
    params = AugmentParams(angle_deg=90.0, scale=2.0, translate_px=(1.0, -1.0), intensity_scale=1.0,
                           intensity_shift=0.0)
    got = affine_points(np.array([[centre[0] + 3, centre[1]]]), params, (H, W))
    np.testing.assert_allclose(got, [[centre[0] + 1, centre[1] + 6 - 1]], atol=1e-12)


def test_same_seed_same_output_and_different_seed_differs():
    image = torch.randint(0, 256, (1, H, W), dtype=torch.uint8)
    points = torch.rand(5, 2) * torch.tensor([W, H])
    aug = build_augmentation("payer")
    a = aug(image, points, augmentation_generator(7, 3, 11))
    b = aug(image, points, augmentation_generator(7, 3, 11))
    c = aug(image, points, augmentation_generator(7, 4, 11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(image, image.clone())  # the input is not modified in place


def test_points_leaving_the_image_are_kept():
    aug = LandmarkAugmentation(max_translate_frac=0.5)
    params = AugmentParams(0.0, 1.0, (30.0, 0.0), 1.0, 0.0)
    points = torch.tensor([[50.0, 10.0]])
    _, moved = aug.apply(torch.zeros(1, H, W, dtype=torch.uint8), points, params)
    assert moved.tolist() == [[80.0, 10.0]]  # x beyond W - 1 = 55: not clamped, not dropped


def test_none_is_identity():
    image = torch.randint(0, 256, (1, H, W), dtype=torch.uint8)
    points = torch.rand(3, 2)
    out, moved = build_augmentation("none")(image, points, torch.Generator().manual_seed(0))
    assert torch.equal(out, image) and torch.equal(moved, points)


def test_intensity_scale_and_shift():
    image = torch.tensor([[[0, 127, 255]]], dtype=torch.uint8)  # v = -1, ~0, 1
    params = AugmentParams(0.0, 1.0, (0.0, 0.0), 0.5, 0.25)
    out, _ = LandmarkAugmentation().apply(image, torch.zeros(0, 2), params)
    # v' = 0.5 v + 0.25 -> -0.25, ~0.248, 0.75 -> (v'+1)·127.5
    assert out.tolist() == [[[round(0.75 * 127.5), round((1 + 0.5 * (127 / 127.5 - 1) + 0.25) * 127.5),
                              round(1.75 * 127.5)]]]


def test_presets_and_validation():
    assert set(AUGMENTATIONS) == {"none", "payer", "boostnet"}
    payer = build_augmentation("payer")
    assert payer.max_rotation_deg == 15.0 and payer.max_translate_frac == pytest.approx(20 / 512)
    assert build_augmentation("payer", max_rotation_deg=5.0).max_rotation_deg == 5.0
    with pytest.raises(ValueError, match="augmentation must be one of"):
        build_augmentation("flip")
    with pytest.raises(ValueError, match=r"unknown augmentation setting\(s\) \['rotation'\]"):
        build_augmentation("payer", rotation=3)
    with pytest.raises(ValueError, match="scale_range must be"):
        LandmarkAugmentation(scale_range=(1.1, 0.9))
    with pytest.raises(ValueError, match="max_rotation_deg must be"):
        LandmarkAugmentation(max_rotation_deg=-1)
    with pytest.raises(ValueError, match=r"image must be a \(1, H, W\) uint8"):
        payer(torch.zeros(1, H, W), torch.zeros(1, 2), torch.Generator())
    with pytest.raises(ValueError, match=r"points must be a \(K, 2\) float"):
        payer(torch.zeros(1, H, W, dtype=torch.uint8), torch.zeros(1, 3), torch.Generator())
