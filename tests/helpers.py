"""Shared test fixtures: a two-head network and a dataset small enough to train in milliseconds."""

import subprocess
from pathlib import Path

import torch
import yaml
from torch import nn

from farnet.inference import Heatmaps

ROOT = Path(__file__).resolve().parents[1]


def committed_params_text() -> str:
    """The committed ``params.yaml`` (``git show HEAD:params.yaml``), not the workspace's: `dvc exp run -S ...`
    rewrites the workspace file (e.g. ``profile: quick``), and tests must not depend on what an experiment
    left there. Outside a git checkout, the file itself."""
    try:
        return subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return (ROOT / "params.yaml").read_text()


def committed_params() -> dict:
    """The committed ``params.yaml``, parsed (see :func:`committed_params_text`)."""
    return yaml.safe_load(committed_params_text())


def write_committed_params(tmp_path: Path) -> Path:
    """A copy of the committed ``params.yaml`` that the test owns."""
    path = tmp_path / "params.yaml"
    path.write_text(committed_params_text())
    return path


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
