"""The fetch stage: a dataset into ``data/raw/<dataset>`` from the offline mirror or its official source."""

from __future__ import annotations

import os
from pathlib import Path

from farnet.config import Params
from farnet.data.registry import get_dataset
from farnet.core.errors import DataError


def mirror_root() -> Path | None:
    """The offline mirror named by ``FARNET_DATA_MIRROR``, or None; a set but missing folder is an error."""
    value = os.environ.get("FARNET_DATA_MIRROR")
    if not value:
        return None
    root = Path(value)
    if not root.is_dir():
        raise DataError(root, "FARNET_DATA_MIRROR names a folder that does not exist")
    return root


def fetch(params: Params, dataset: str, raw_root: Path) -> dict:
    """Fetch ``dataset`` into ``raw_root/<dataset>`` from the mirror or the official source."""
    spec = get_dataset(dataset)
    mirror = mirror_root()
    return spec.fetch(raw_root / dataset, mirror / dataset if mirror else None, params.datasets[dataset])
