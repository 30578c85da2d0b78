"""A tiny two-head network and a seven-item dataset that can raise a signal mid-epoch: the training engine's
test bench (interruption and resume, robustness)."""

import signal

import torch

from farnet.models.interface import Heatmaps


class Tiny(torch.nn.Module):
    def __init__(self, k=2):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        self.fine = torch.nn.Conv2d(4, k, 1)
        self.coarse = torch.nn.Conv2d(4, k, 1)

    def forward(self, x):
        f = self.body(x)
        return Heatmaps(fine=self.fine(f), coarse=self.coarse(torch.nn.functional.avg_pool2d(f, 2)))


class Data(torch.utils.data.Dataset):
    """Seven items (batch 2: four steps per epoch, the last one short); optionally raises a signal while the
    first item of step ``at[1]`` (1-based) of epoch ``at[0]`` (0-based) is fetched."""

    def __init__(self, at=None, signum=signal.SIGINT):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randint(0, 256, (7, 1, 16, 16), generator=g, dtype=torch.uint8)
        self.points = torch.rand(7, 2, 2, generator=g) * 15
        self.at, self.signum, self.epoch, self.fetches = at, signum, None, 0

    def set_epoch(self, epoch):  # the engine calls it before each epoch
        self.epoch, self.fetches = epoch, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.fetches += 1
        if self.at is not None and (self.epoch, self.fetches) == (self.at[0], 2 * self.at[1] - 1):
            signal.raise_signal(self.signum)
        return self.images[i], self.points[i], i
