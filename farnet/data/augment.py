"""Landmark-preserving data augmentation on the cached input-size images (paper §4.2).

The hand dataset is augmented "following Payer et al." and the spine dataset "following BoostNet"; the ISBI
dataset is not augmented. Both are a random similarity transform (rotation and isotropic scale about the image
centre, then a translation) plus a random intensity scale and shift. One transform moves the image and its
landmarks together: the image through ``torchvision.transforms.v2.functional.affine`` (bilinear, zero fill),
the points through the same call on a ``tv_tensors.KeyPoints``. torchvision puts pixel centres at i + 0.5;
the project puts them at integers (docs/design.md §2.2), so points are shifted by +0.5 before and −0.5 after. In the
project's coordinates the transform is

    p' = c + s · R(θ) · (p − c) + t,   c = ((W − 1)/2, (H − 1)/2),   R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]],

with y pointing down, so a positive θ turns the image clockwise on screen (:func:`affine_points` computes it
directly). ``torchvision.transforms.v2.RandomAffine`` would move KeyPoints too, but draws its parameters from
the global torch RNG; here they come from a caller-given ``torch.Generator``, so an item's augmentation depends
only on (seed, epoch, index) and a resumed run sees the same images (:func:`augmentation_generator`).

Points that leave the image are kept as they are (never clamped or dropped): their heatmap target simply
falls (partly) off the image.

Intensity works on the 8-bit image mapped to [−1, 1] (v = x/127.5 − 1), as Payer et al. do: v' = a·v + b,
clamped to [−1, 1] and rounded back to uint8. It is applied after the geometric transform, so the zero-filled
border takes the same intensity change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision import tv_tensors

__all__ = [
    "AUGMENTATIONS",
    "AugmentParams",
    "LandmarkAugmentation",
    "build_augmentation",
    "augmentation_generator",
    "affine_points",
]

_DRAWS = 6  # uniform numbers drawn per item, whatever the settings, so the streams never shift


class AugmentParams(NamedTuple):
    """One draw of the random transform."""

    angle_deg: float  # clockwise on screen
    scale: float
    translate_px: tuple[float, float]  # (tx, ty) input pixels
    intensity_scale: float
    intensity_shift: float  # in [−1, 1] intensity units


@dataclass(frozen=True)
class LandmarkAugmentation:
    """A random similarity transform plus intensity change, applied to an image and its landmarks together.

    Every range is symmetric or [lo, hi]; the identity settings (the defaults) leave items unchanged.

    Args:
        max_rotation_deg: θ ~ U(−m, m) degrees.
        scale_range: s ~ U(lo, hi).
        max_translate_frac: (tx, ty) ~ U(−m, m) × (W, H), so the same setting works at any input size.
        intensity_scale_range: a ~ U(lo, hi) on [−1, 1] intensities.
        max_intensity_shift: b ~ U(−m, m) on [−1, 1] intensities.
    """

    max_rotation_deg: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    max_translate_frac: float = 0.0
    intensity_scale_range: tuple[float, float] = (1.0, 1.0)
    max_intensity_shift: float = 0.0

    def __post_init__(self):
        for name in ("max_rotation_deg", "max_translate_frac", "max_intensity_shift"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("scale_range", "intensity_scale_range"):
            value = tuple(getattr(self, name))
            if len(value) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value) \
                    or not 0 < value[0] <= value[1]:
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi, got {getattr(self, name)!r}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))

    @property
    def is_identity(self) -> bool:
        return self == LandmarkAugmentation()

    def sample(self, size_hw: tuple[int, int], generator: torch.Generator) -> AugmentParams:
        """Draw one transform for an image of size (H, W)."""
        u = torch.rand(_DRAWS, generator=generator, dtype=torch.float64).tolist()
        height, width = size_hw
        lo, hi = self.scale_range
        ilo, ihi = self.intensity_scale_range
        return AugmentParams(
            angle_deg=(2 * u[0] - 1) * self.max_rotation_deg,
            scale=lo + u[1] * (hi - lo),
            translate_px=((2 * u[2] - 1) * self.max_translate_frac * width,
                          (2 * u[3] - 1) * self.max_translate_frac * height),
            intensity_scale=ilo + u[4] * (ihi - ilo),
            intensity_shift=(2 * u[5] - 1) * self.max_intensity_shift,
        )

    def apply(self, image_u8: torch.Tensor, points: torch.Tensor,
              params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply one drawn transform: (1, H, W) uint8 and (K, 2) (x, y) -> the same shapes and dtypes."""
        _check_inputs(image_u8, points)
        height, width = image_u8.shape[-2:]
        geometry = dict(angle=float(params.angle_deg), translate=[float(t) for t in params.translate_px],
                        scale=float(params.scale), shear=[0.0, 0.0])
        image = TF.affine(tv_tensors.Image(image_u8), **geometry, interpolation=TF.InterpolationMode.BILINEAR,
                          fill=0)
        # torchvision's pixel centres are at i + 0.5, the project's at i.
        keypoints = tv_tensors.KeyPoints(points.to(torch.float64) + 0.5, canvas_size=(height, width))
        moved = TF.affine(keypoints, **geometry).as_subclass(torch.Tensor) - 0.5  # (K, 2)
        image = _intensity(image.as_subclass(torch.Tensor), params.intensity_scale, params.intensity_shift)
        return image, moved.to(points.dtype)

    def __call__(self, image_u8: torch.Tensor, points: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one item.

        Args:
            image_u8: (1, H, W) uint8 image at the network input size.
            points: (K, 2) (x, y) landmarks in that image's pixels.
            generator: source of the random draws (e.g. from :func:`augmentation_generator`).

        Returns:
            (image (1, H, W) uint8, points (K, 2) of the input dtype); points outside the image are kept.
        """
        _check_inputs(image_u8, points)
        if self.is_identity:
            return image_u8.clone(), points.clone()
        return self.apply(image_u8, points, self.sample(tuple(image_u8.shape[-2:]), generator))


def _check_inputs(image_u8: torch.Tensor, points: torch.Tensor) -> None:
    if not isinstance(image_u8, torch.Tensor) or image_u8.dtype != torch.uint8 or image_u8.ndim != 3 \
            or image_u8.shape[0] != 1:
        raise ValueError(f"image must be a (1, H, W) uint8 tensor, got {getattr(image_u8, 'shape', None)} "
                         f"{getattr(image_u8, 'dtype', type(image_u8))}")
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 2 \
            or not points.is_floating_point():
        raise ValueError(f"points must be a (K, 2) float tensor, got {getattr(points, 'shape', None)} "
                         f"{getattr(points, 'dtype', type(points))}")


def _intensity(image_u8: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """v = x/127.5 − 1; v' = clamp(scale·v + shift, −1, 1); back to uint8 (rounded)."""
    if scale == 1.0 and shift == 0.0:
        return image_u8
    v = image_u8.to(torch.float32) / 127.5 - 1.0
    v = (v * scale + shift).clamp_(-1.0, 1.0)
    return ((v + 1.0) * 127.5).round_().to(torch.uint8)


def affine_points(points: np.ndarray, params: AugmentParams, size_hw: tuple[int, int]) -> np.ndarray:
    """The transform of :class:`LandmarkAugmentation` applied to (K, 2) points, computed directly (float64).

    p' = c + s·R(θ)·(p − c) + t with c = ((W − 1)/2, (H − 1)/2), θ clockwise on screen.
    """
    pts = np.asarray(points, dtype=np.float64)
    height, width = size_hw
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    theta = math.radians(params.angle_deg)
    rotation = params.scale * np.array([[math.cos(theta), -math.sin(theta)],
                                        [math.sin(theta), math.cos(theta)]])
    return centre + (pts - centre) @ rotation.T + np.asarray(params.translate_px, dtype=np.float64)


# Presets. Where a value comes from is said next to it; every guess is marked "deviation".
AUGMENTATIONS: dict[str, dict] = {
    "none": {},
    # Payer et al. (MedIA 2019) hand setup: random translation, rotation, scaling and intensity shift/scale on
    # a [−1, 1]-normalised image; ±20 px at their 512² input is taken as 20/512 of the size.
    # deviation: the values below follow Payer et al.'s public code family (intensity shift/scale ±0.25) and
    # docs/design.md §2.2 (±20 px, ±15°); they were not checked against the paper's text here. Their elastic
    # deformation and per-axis scaling are left out (a similarity keeps the points exact).
    "payer": dict(max_rotation_deg=15.0, scale_range=(0.85, 1.15), max_translate_frac=20 / 512,
                  intensity_scale_range=(0.75, 1.25), max_intensity_shift=0.25),
    # BoostNet (Wu et al. 2017): "random rotation, scaling, cropping and intensity" without stated ranges.
    # deviation: the ranges are guesses: small rotation ±10°, scale 0.9-1.1, a crop/shift of ±5 % of the
    # size, contrast ±20 % and brightness ±0.1. No flips: they would swap left and right corners.
    "boostnet": dict(max_rotation_deg=10.0, scale_range=(0.9, 1.1), max_translate_frac=0.05,
                     intensity_scale_range=(0.8, 1.2), max_intensity_shift=0.1),
}


def build_augmentation(kind: str, **overrides) -> LandmarkAugmentation:
    """The named augmentation ("none", "payer" or "boostnet"), with any field of
    :class:`LandmarkAugmentation` overridden by keyword.

    Raises:
        ValueError: unknown kind or field, or a bad value.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {tuple(AUGMENTATIONS)}, got {kind!r}")
    fields = asdict(LandmarkAugmentation())
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown augmentation setting(s) {unknown}; known: {sorted(fields)}")
    return LandmarkAugmentation(**{**AUGMENTATIONS[kind], **overrides})


def augmentation_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, index) through numpy's SeedSequence (well mixed, stable
    across runs and platforms)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
