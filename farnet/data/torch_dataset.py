"""Torch view of a prepared cache: uint8 images and landmarks at the network's input size.

Images stay uint8 until they reach the device, where :func:`farnet.models.interface.normalize` scales them to [0, 1], replicates the
grey channel to 3 and applies the ImageNet mean/std (docs/design.md §2.2). Keeping the cache memory-mapped means a
training run never decodes a full-size file.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset



class LandmarkDataset(Dataset):
    """Items ``(image (1, H, W) uint8, landmarks (K, 2) float32 in input pixels, index)``.

    With an augmentation, each item is transformed by a generator seeded from (seed, epoch, index), so a run
    is reproducible and a resumed run sees the same augmented images as an uninterrupted one; the engine calls
    :meth:`set_epoch` at the start of every epoch.

    Args:
        images: (N, H, W) uint8 array, typically memory-mapped.
        landmarks: (N, K, 2) float32 input-pixel coordinates.
        augment: "none", or the name of a landmark-preserving augmentation (:mod:`farnet.data.augment`).
        seed: the run's seed.
    """

    def __init__(self, images: np.ndarray, landmarks: np.ndarray, augment: str = "none", seed: int = 0):
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W) uint8, got {images.shape} {images.dtype}")
        if landmarks.ndim != 3 or landmarks.shape[0] != images.shape[0] or landmarks.shape[2] != 2:
            raise ValueError(f"landmarks must be (N, K, 2) with N = {images.shape[0]}, got {landmarks.shape}")
        self.images = images
        self.landmarks = landmarks
        self.n = images.shape[0]
        self.seed = seed
        self.epoch = 0
        self.augment = None
        if augment != "none":
            from farnet.data.augment import build_augmentation

            self.augment = build_augmentation(augment)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(index)
        image = torch.from_numpy(np.array(self.images[index], copy=True)).unsqueeze(0)
        points = torch.from_numpy(np.asarray(self.landmarks[index], dtype=np.float32).copy())
        if self.augment is not None:
            from farnet.data.augment import augmentation_generator

            image, points = self.augment(image, points, augmentation_generator(self.seed, self.epoch, index))
        return image, points, index
