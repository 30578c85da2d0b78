"""One split of a prepared dataset at a run's input size.

The prepare stage caches every image of a dataset once, at the dataset's size, with ``dataset.json`` beside the
cache naming its splits and landmarks. A run reads one split from it; when the run's input size differs from
the cache's (a reduced profile, or an experiment on input size), the images are resized once in memory and the
landmarks recomputed from the exact original coordinates, so no rounding accumulates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farnet.core.coords import rescale_points
from farnet.data.cache import load_cache
from farnet.data.imageio import resize_grayscale
from farnet.core.errors import DataError

DATASET_INFO = "dataset.json"


@dataclass(frozen=True, eq=False)
class SplitView:
    """Images and landmarks of one split at one input size.

    Attributes:
        images: (N, H, W) uint8.
        landmarks: (N, K, 2) float32 input pixels.
        input_to_original: (N, 2) (ax, ay) with x_orig = (x_in + 0.5)·ax − 0.5.
        landmarks_original: (N, K, 2) float64 original pixels (exact ground truth).
        spacing_mm: (N,) mm per original pixel, NaN where there is none.
        original_wh: (N, 2) original image sizes.
    """

    split: str
    ids: list[str]
    images: np.ndarray
    landmarks: np.ndarray
    input_to_original: np.ndarray
    landmarks_original: np.ndarray
    spacing_mm: np.ndarray
    original_wh: np.ndarray
    landmark_names: tuple[str, ...]

    @property
    def input_hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

    def __len__(self) -> int:
        return len(self.ids)

    def to_original(self, points_in: np.ndarray) -> np.ndarray:
        """(N, K, 2) input-pixel points of every image of the split -> original pixels (float64)."""
        return rescale_points(np.asarray(points_in, dtype=np.float64), self.input_to_original[:, None, :])


def read_dataset_info(prepared_dir: str | Path) -> dict:
    """The splits, landmark names, unit and counts stored beside a prepared cache."""
    path = Path(prepared_dir) / DATASET_INFO
    if not path.is_file():
        raise DataError(path, "missing: run the prepare stage first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc}", line=exc.lineno) from exc


def load_split(prepared_dir: str | Path, split: str, input_hw: tuple[int, int] | None = None,
               limit: int | None = None, *, skip: int = 0) -> SplitView:
    """Read ``split`` of a prepared dataset, resized to ``input_hw`` when it differs from the cache's size.

    Args:
        limit: keep the first ``limit`` images of the split (reduced profiles).
        skip: leave out the first ``skip`` images first (``skip=limit`` reads the images a limited run never saw).
    """
    info = read_dataset_info(prepared_dir)
    if split not in info["splits"]:
        raise DataError(Path(prepared_dir) / DATASET_INFO, f"no split {split!r} (have: {', '.join(info['splits'])})")
    cache = load_cache(prepared_dir)
    position = {image_id: i for i, image_id in enumerate(cache.ids)}
    ids = list(info["splits"][split])[skip:][:limit]
    if not ids:
        raise DataError(Path(prepared_dir) / DATASET_INFO, f"split {split!r} has no images")
    index = np.asarray([position[i] for i in ids])
    images = np.asarray(cache.images[index])  # (N, H, W), read into memory
    scale = cache.input_to_original[index].copy()  # (N, 2)
    if input_hw is not None and tuple(input_hw) != tuple(cache.input_hw):
        images = np.stack([resize_grayscale(image, tuple(input_hw)) for image in images])
        h, w = cache.input_hw
        scale *= np.array([w / input_hw[1], h / input_hw[0]])
    original = cache.landmarks_original[index]  # (N, K, 2)
    landmarks = rescale_points(original, 1 / scale[:, None, :]).astype(np.float32)
    return SplitView(split=split, ids=ids, images=images, landmarks=landmarks, input_to_original=scale,
                     landmarks_original=original, spacing_mm=cache.spacing_mm[index],
                     original_wh=cache.original_wh[index], landmark_names=tuple(info["landmark_names"]))
