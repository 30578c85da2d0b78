"""Shared test fixtures: a two-head network and a dataset small enough to train in milliseconds."""

import subprocess
from pathlib import Path

import torch
import yaml
from torch import nn

from farnet.models.interface import Heatmaps

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


ISBI_LIKE_SPLITS = (("train", 4), ("test1", 2), ("test2", 2))


def write_prepared(root: Path, input_hw=(64, 64), splits=ISBI_LIKE_SPLITS, k: int = 3) -> Path:
    """A prepared ``isbi2015`` folder (``root/prepared/isbi2015``) of synthetic radiograph-like images, made by the
    prepare stage's own cache: smooth grey ramps with mild noise, stored at half of a 160x192 original (W x H),
    0.1 mm per original pixel, K landmarks, ISBI's split names and unit. Returns that folder."""
    import json

    import numpy as np
    from PIL import Image

    from farnet.data.cache import build_cache
    from farnet.data.sample import Sample
    from farnet.data.views import DATASET_INFO

    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(96), np.arange(80)).astype(np.float64)  # (H, W) stored
    samples, ids = [], {}
    for split, n in splits:
        ids[split] = []
        for _ in range(n):
            image_id = f"{len(samples) + 1:03d}"
            path = root / "raw" / f"{image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = np.clip(ramp + rng.normal(0, 4, ramp.shape) + 30 * len(samples) % 60, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(path)
            points = rng.uniform(10, 150, (k, 2))  # original pixels
            samples.append(Sample(image_id, path, points, (160, 192), (80, 96), 0.1, (0.5, 0.5)))
            ids[split].append(image_id)
    out = build_cache(samples, root / "prepared" / "isbi2015", tuple(input_hw), progress=False)
    info = {"dataset": "isbi2015", "unit": "mm", "landmark_names": [f"landmark{i}" for i in range(k)],
            "input_hw": list(input_hw), "splits": ids, "counts": {s: len(v) for s, v in ids.items()},
            "fetched": {"source": "synthetic"}, "extras": {}}
    (out / DATASET_INFO).write_text(json.dumps(info))
    return out
