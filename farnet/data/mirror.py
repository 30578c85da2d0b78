"""Verified copies from a local data mirror (docs/design.md §2.1), and what every dataset's mirror fetch shares.

A mirror is the folder ``$FARNET_DATA_MIRROR/<dataset>``. Every file is copied under a temporary name, checked
against the sha256 the project commits for it (:mod:`farnet.data.manifest`) and renamed into place, so an
interrupted fetch never leaves a half file; files already present with the right hash are skipped, so re-runs
are fast. Each fetch records what it copied in ``<dest>/FETCHED.json`` (:func:`write_fetched`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from farnet.core.errors import DataError
from farnet.core.fileio import write_json
from farnet.data.archives import is_absolute_name, member_parts
from farnet.data.manifest import sha256_file

__all__ = ["MIRROR_ENV", "copy_verified", "mirror_folder", "clear_partial_files", "write_fetched"]

MIRROR_ENV = "FARNET_DATA_MIRROR"


def mirror_folder(mirror: str | Path) -> Path:
    """The dataset's mirror folder, checked to exist.

    Raises:
        DataError: naming the folder and :data:`MIRROR_ENV` when it is not a folder.
    """
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise DataError(mirror, f"mirror folder not found (check {MIRROR_ENV})")
    return mirror


def clear_partial_files(dest: Path) -> None:
    """Create ``dest`` and remove the temporary files an interrupted fetch left in it (:func:`copy_verified`)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.rglob(".*.tmp"):
        stale.unlink()


def write_fetched(dest: Path, summary: dict, hashes: dict[str, str], **extra) -> dict:
    """Write ``dest/FETCHED.json``: ``summary``, then ``extra``, then every fetched file's sha256 by path.

    Returns:
        ``summary``, what the fetch functions return.
    """
    write_json(dest / "FETCHED.json", {**summary, **extra, "sha256": dict(sorted(hashes.items()))})
    return summary


def _checked_relpath(relpath: str, origin: Path) -> str:
    parts = member_parts(relpath)
    if is_absolute_name(relpath) or ".." in parts or not parts:
        raise DataError(origin, f"refusing path {relpath!r}: must be relative and stay inside the folder")
    return "/".join(parts)


def copy_verified(src_root: str | Path, dest_root: str | Path, entries: Iterable[tuple[str, str | None]],
                  *, progress: bool = True, desc: str = "copy") -> dict[str, str]:
    """Copy files from src_root to dest_root, keeping their relative layout and checking each sha256.

    Each copy is written under a temporary name, hashed, and renamed into place only when its hash matches,
    so an interrupted or failed copy leaves no half file. A destination file that already has the expected
    hash is not copied again.

    Args:
        src_root: folder to copy from (e.g. a dataset's mirror folder).
        dest_root: folder to copy into.
        entries: (relative path, expected sha256 or None) per file; None copies without checking.
        progress: show a tqdm bar.
        desc: label of the bar.

    Returns:
        Relative path -> sha256 of every copied or already-present file.

    Raises:
        DataError: a source file is missing, or its copy's hash differs from the expected one (naming the
            source file).
    """
    src_root, dest_root = Path(src_root), Path(dest_root)
    entries = list(entries)
    hashes: dict[str, str] = {}
    for relpath, expected in tqdm(entries, desc=desc, unit="file", disable=not progress):
        rel = _checked_relpath(relpath, src_root)
        expected = expected.lower() if expected is not None else None
        src, dst = src_root / rel, dest_root / rel
        if expected is not None and dst.is_file() and sha256_file(dst) == expected:
            hashes[rel] = expected
            continue
        if not src.is_file():
            raise DataError(src, "file listed in the manifest is missing from the mirror")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(src, tmp)
            actual = sha256_file(tmp)  # verify the copy, not just the source
            if expected is not None and actual != expected:
                raise DataError(src, f"sha256 mismatch for {rel}: manifest says {expected}, file has {actual}")
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        hashes[rel] = actual
    return hashes


