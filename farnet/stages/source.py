"""The source stage: what an own dataset's folder holds now, so that DVC sees an edit of it.

DVC tracks params.yaml and files inside the project, not a dataset folder a user names with ``datasets.<name>.root``:
after a first ``dvc repro``, an edited landmarks CSV left every stage "up to date" and the old landmarks in use.
This stage runs at every ``dvc repro`` (``always_changed``) and writes a record of the folder (the CSV's sha256 and
every file's size and modification time); the fetch stage depends on the record, so it copies the folder again
exactly when something in it changed. A dataset without a ``root`` (fetched from its mirror or source) records
nothing that changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from farnet.config import Params
from farnet.core.errors import DataError
from farnet.data.manifest import sha256_file


def source_record(params: Params, dataset: str) -> dict:
    """``{"dataset", "root", "csv", "csv_sha256", "files_sha256"}`` for a dataset with a ``root``; ``{"dataset",
    "root": None}`` for one without.

    Raises:
        DataError: naming the root when it is not a folder, or the CSV when it is missing.
    """
    entry = params.datasets[dataset]
    if entry.root is None:
        return {"dataset": dataset, "root": None}
    root = Path(entry.root)
    if not root.is_dir():
        raise DataError(root, f"datasets.{dataset}.root is not a folder")
    csv = root / entry.csv
    if not csv.is_file():
        raise DataError(csv, f"the landmarks file datasets.{dataset}.csv names is not in datasets.{dataset}.root")
    listing = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        listing.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"dataset": dataset, "root": str(root.resolve()), "csv": entry.csv, "csv_sha256": sha256_file(csv),
            "files_sha256": listing.hexdigest()}
