"""Shared test fixtures: a two-head network and a dataset small enough to train in milliseconds."""

import torch
from torch import nn

from farnet.model import Heatmaps


class TinyNet(nn.Module):
    """Fine and coarse heads like FARNet's, on one conv (+ batch norm when asked)."""

    def __init__(self, k=2, batch_norm=True):
        super().__init__()
        layers = [nn.Conv2d(3, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if batch_norm else []) + [nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.fine = nn.Conv2d(4, k, 1)
        self.coarse = nn.Conv2d(4, k, 1)

    def forward(self, x):
        f = self.body(x)
        return Heatmaps(fine=self.fine(f), coarse=self.coarse(nn.functional.avg_pool2d(f, 2)))


class RandomLandmarks(torch.utils.data.Dataset):
    """Seeded random uint8 images (1, H, W) with K landmarks, as the engine expects its items."""

    def __init__(self, n=5, hw=(16, 16), k=2):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randint(0, 256, (n, 1, *hw), generator=g, dtype=torch.uint8)
        self.points = torch.rand(n, k, 2, generator=g) * (hw[1] - 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.points[i], i
