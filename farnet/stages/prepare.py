"""The prepare stage: every image of a dataset decoded once and cached at its size, with its splits."""

from __future__ import annotations

import json
from pathlib import Path

from farnet.config import Params
from farnet.data.cache import build_cache
from farnet.data.registry import get_dataset
from farnet.data.views import DATASET_INFO
from farnet.core.errors import DataError
from farnet.core.fileio import write_json


def prepare(params: Params, dataset: str, raw_root: Path, prepared_root: Path) -> dict:
    """Cache every image of ``dataset`` at its size and write ``dataset.json``; returns that info."""
    spec = get_dataset(dataset)
    options = params.datasets[dataset]
    samples, splits, names = spec.read(raw_root / dataset, options)
    if not samples:
        raise DataError(raw_root / dataset, "no images found")
    ids = [s.image_id for s in samples]
    if len(set(ids)) != len(ids):
        raise DataError(raw_root / dataset, "image ids are not unique across splits")
    out = prepared_root / dataset
    build_cache(samples, out, options.input_hw)
    fetched = raw_root / dataset / "FETCHED.json"
    info = {
        "dataset": dataset, "unit": spec.unit, "landmark_names": list(names), "input_hw": list(options.input_hw),
        "splits": splits, "counts": {name: len(v) for name, v in splits.items()},
        "fetched": json.loads(fetched.read_text()) if fetched.is_file() else {},
        "extras": spec.extras(raw_root / dataset, ids),
    }
    info["fetched"].pop("files", None)  # per-file hashes stay in FETCHED.json
    write_json(out / DATASET_INFO, info)
    return info
