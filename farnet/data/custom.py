"""Reader of a researcher's own landmark dataset: a folder of images plus ONE CSV of landmarks.

The CSV (UTF-8, comma-separated, header row first) has one row per image::

    image,sella_x,sella_y,nasion_x,nasion_y,spacing_mm,split
    scans/001.png,812.5,1020,1403,960.25,0.1,train
    scans/002.dcm,790,1011.5,1391,955,,test

- ``image`` (first column): the image file, relative to the dataset folder (``/`` separators, no ``..``); any
  format :func:`~farnet.data.imageio.read_grayscale` reads (BMP, PNG, JPEG, TIFF, DICOM). Each image once.
- then one ``<name>_x,<name>_y`` pair per landmark, in order: K = the number of pairs; the names are the
  landmark names. Coordinates are pixels of the image file as stored: (x, y), 0-based, pixel centres at
  integers, so every point must lie in [−0.5, W − 0.5] × [−0.5, H − 0.5]. Plain decimal numbers only.
- optional ``spacing_mm``: mm per pixel of that image; empty = unknown (errors are then reported in pixels).
- optional ``split``: ``train``, ``val`` or ``test`` on every row. Without the column, :func:`assign_splits`
  draws an 80/10/10 split from a seed (the same ids and seed always give the same split).

No other columns are allowed, and every problem (a wrong field count, a non-numeric, NaN or infinite value, a
point outside its image, a missing or unreadable image, a duplicate image) raises
:class:`~farnet.core.errors.DataError` naming the CSV and the line.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
from pathlib import Path, PurePosixPath

import numpy as np

from farnet.core.fileio import write_json
from farnet.data.imageio import read_image_size
from farnet.data.manifest import sha256_file
from farnet.data.sample import Sample
from farnet.core.errors import DataError

__all__ = ["read_custom", "assign_splits", "fetch_custom", "SPLITS", "SPLIT_FRACTIONS"]

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
_OPTIONAL = ("spacing_mm", "split")
# A plain decimal number; Python's float() would also take "1_000", non-ASCII digits and "infinity".
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf)", re.IGNORECASE | re.ASCII)


def read_custom(root: str | Path, csv_name: str = "landmarks.csv", *,
                split_seed: int = 0) -> tuple[list[Sample], dict[str, list[str]], list[str]]:
    """Read an own dataset: ``root/csv_name`` and the images it lists (headers only, nothing decoded).

    Args:
        root: the dataset folder.
        csv_name: the landmarks CSV inside it.
        split_seed: seed of :func:`assign_splits` when the CSV has no ``split`` column.

    Returns:
        One :class:`Sample` per row in CSV order (``image_id`` = the relative image path, landmarks (K, 2) in
        the image's pixels); ``{"train": ids, "val": ids, "test": ids}``; the K landmark names.

    Raises:
        DataError: naming the CSV (and the line) for any bad header or row, or a missing CSV.
    """
    root = Path(root)
    csv_path = root / csv_name
    rows = _read_rows(csv_path)
    if not rows:
        raise DataError(csv_path, "empty file: expected a header row 'image,<name>_x,<name>_y,...'", line=1)
    header_line, header = rows[0]
    names, optional = _parse_header(csv_path, header, header_line)
    if len(rows) == 1:
        raise DataError(csv_path, "no image rows after the header", line=header_line)

    samples: list[Sample] = []
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    first_line: dict[str, int] = {}
    for line, row in rows[1:]:
        sample, split = _parse_row(csv_path, root, row, line, names, optional, len(header))
        if sample.image_id in first_line:
            raise DataError(csv_path, f"duplicate image {sample.image_id!r} (first on line "
                                      f"{first_line[sample.image_id]})", line=line)
        first_line[sample.image_id] = line
        samples.append(sample)
        if split is not None:
            splits[split].append(sample.image_id)
    if "split" not in optional:
        splits = assign_splits([s.image_id for s in samples], split_seed)
    return samples, splits, names


def assign_splits(ids: list[str], seed: int = 0,
                  fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> dict[str, list[str]]:
    """A seeded train/val/test split of ``ids`` (independent of their order); each list keeps the input order.

    Val and test get round(n·fraction) images each, train the rest (at least one image when n ≥ 1).
    """
    if len(fractions) != 3 or any(not 0 <= f <= 1 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three numbers in [0, 1] summing to 1, got {fractions!r}")
    order = sorted(ids)
    n = len(order)
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    while n and n_val + n_test >= n:  # keep one image for training
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    permuted = [order[i] for i in np.random.default_rng(seed).permutation(n)]
    chosen = {"val": set(permuted[:n_val]), "test": set(permuted[n_val:n_val + n_test])}
    which = {i: s for s, members in chosen.items() for i in members}
    return {split: [i for i in ids if which.get(i, "train") == split] for split in SPLITS}


def fetch_custom(dest: str | Path, params) -> dict:
    """Validate an own dataset and record it in ``dest/FETCHED.json`` (sha256 of the CSV and every image).

    Args:
        dest: where the pipeline expects the dataset (``data/raw/custom``).
        params: a :class:`~farnet.config.DatasetParams`: ``root`` (the dataset folder; None: ``dest`` itself
            holds it) and ``csv`` (the landmarks file). With a ``root``, the CSV and the images it lists are
            copied into ``dest`` (through a temporary folder, renamed into place).
    """
    dest = Path(dest)
    source = Path(params.root) if params.root else dest
    samples, splits, _ = read_custom(source, params.csv, split_seed=params.split_seed)  # refuse bad data first
    _refuse_empty_splits(source / params.csv, splits, len(samples))
    image_sha256 = _refuse_shared_images(source / params.csv, source, splits)
    files = [params.csv] + [s.image_id for s in samples]
    hashes = {}
    if source.resolve() != dest.resolve():
        _copy_dataset(source, dest, files)
    else:  # the folder itself: its images were hashed just now
        hashes = image_sha256
    record = {"source": "custom", "root": str(source), "csv": params.csv, "n_images": len(samples),
              "files": {f: hashes.get(f) or sha256_file(dest / f) for f in files}}
    write_json(dest / "FETCHED.json", record)
    return record


def _refuse_empty_splits(csv_path: Path, splits: dict[str, list[str]], n_rows: int) -> None:
    """DataError before anything runs when a split a run needs is empty: it trains on ``train`` and is evaluated
    on ``val`` and ``test`` (farnet.data.registry), which would otherwise fail after the training."""
    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        raise DataError(csv_path, f"split {' and '.join(map(repr, empty))} {'has' if len(empty) == 1 else 'have'} no "
                                  f"images ({n_rows} rows; {', '.join(f'{k} {len(v)}' for k, v in splits.items())}): a "
                                  "run trains on train and is evaluated on val and test; give each at least one row "
                                  "(the split column, or enough rows for the seeded 80/10/10 split)")


def _refuse_shared_images(csv_path: Path, root: Path, splits: dict[str, list[str]]) -> dict[str, str]:
    """DataError naming both rows when one image (the same bytes: a copy, a symlink, a hard link) is listed in
    two splits, e.g. train and test: a model would be tested on an image it was trained on.

    Returns:
        The sha256 of each listed image, by image id.
    """
    hashes: dict[str, str] = {}
    seen: dict[str, tuple[str, str]] = {}  # sha256 -> (image id, split) of its first row
    for split in SPLITS:
        for image_id in splits[split]:
            digest = hashes[image_id] = sha256_file(root / image_id)
            first_id, first_split = seen.setdefault(digest, (image_id, split))
            if first_split != split:
                lines = {_image_path(csv_path, root, row[0], line)[0]: line  # the rows, for the message only
                         for line, row in _read_rows(csv_path)[1:] if row and row[0].strip()}
                raise DataError(csv_path, f"{image_id!r} ({split}) is the same image as {first_id!r} "
                                          f"({first_split}, line {lines.get(first_id)}): the {first_split} and "
                                          f"{split} splits would share it; list each image once", line=lines.get(image_id))
    return hashes


# ---- helpers -------------------------------------------------------------------------------------------------

def _read_rows(csv_path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank record; DataError for unreadable or malformed CSV text."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(csv_path, "landmarks CSV not found") from None
    except UnicodeDecodeError as err:
        raise DataError(csv_path, f"not UTF-8 text ({err})") from None
    except OSError as err:
        raise DataError(csv_path, f"cannot read landmarks CSV: {err}") from err
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        for fields in reader:
            if fields:  # skip blank lines
                rows.append((reader.line_num, fields))
    except csv.Error as err:  # bad quoting, a field over csv.field_size_limit()
        raise DataError(csv_path, f"malformed CSV: {err}", line=max(reader.line_num, 1)) from None
    return rows


def _parse_header(csv_path: Path, header: list[str], line: int) -> tuple[list[str], dict[str, int]]:
    """Landmark names and the positions of the optional columns."""
    cells = [c.strip() for c in header]
    if cells[0] != "image":
        raise DataError(csv_path, f"the first column must be 'image', got {cells[0]!r}", line=line)
    duplicates = sorted({c for c in cells if cells.count(c) > 1})
    if duplicates:
        raise DataError(csv_path, f"duplicate columns {duplicates}", line=line)
    optional = {c: i for i, c in enumerate(cells) if c in _OPTIONAL}
    coords = [c for c in cells[1:] if c not in _OPTIONAL]
    names = []
    for j in range(0, len(coords), 2):
        cx = coords[j]
        cy = coords[j + 1] if j + 1 < len(coords) else ""
        name = cx[:-2]
        if not (cx.endswith("_x") and name and cy == f"{name}_y"):
            raise DataError(csv_path, f"expected a '<name>_x,<name>_y' column pair, got {cx!r}, {cy!r} (allowed "
                                      f"besides: image, {', '.join(_OPTIONAL)})", line=line)
        names.append(name)
    if not names:
        raise DataError(csv_path, "no landmark columns: expected 'image,<name>_x,<name>_y,...'", line=line)
    return names, optional


def _parse_row(csv_path: Path, root: Path, row: list[str], line: int, names: list[str], optional: dict[str, int],
               n_columns: int) -> tuple[Sample, str | None]:
    if len(row) != n_columns:
        raise DataError(csv_path, f"expected {n_columns} fields (image, {len(names)} x/y pairs"
                                  f"{''.join(', ' + c for c in optional)}), got {len(row)}", line=line)
    image_id, path = _image_path(csv_path, root, row[0], line)
    coord_columns = [i for i in range(1, n_columns) if i not in optional.values()]
    values = []
    for i in coord_columns:
        text = row[i].strip()
        if not _NUMBER.fullmatch(text):
            raise DataError(csv_path, f"{image_id}: column {i + 1} is not a number: {_short(text)!r}", line=line)
        value = float(text)
        if not math.isfinite(value):
            raise DataError(csv_path, f"{image_id}: non-finite coordinate {text!r} in column {i + 1}", line=line)
        values.append(value)
    points = np.asarray(values, dtype=np.float64).reshape(len(names), 2)  # (K, 2)
    try:
        width, height = read_image_size(path)
    except DataError as err:
        raise DataError(csv_path, f"image {image_id!r}: {err}", line=line) from err
    for name, (x, y) in zip(names, points):
        if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
            raise DataError(csv_path, f"{image_id}: landmark {name!r} ({x:g}, {y:g}) is outside the "
                                      f"{width}x{height} image", line=line)
    spacing = None
    if "spacing_mm" in optional:
        text = row[optional["spacing_mm"]].strip()
        if text:
            spacing = float(text) if _NUMBER.fullmatch(text) else math.nan
            if not (math.isfinite(spacing) and spacing > 0):
                raise DataError(csv_path, f"{image_id}: spacing_mm {_short(text)!r} is not a positive number",
                                line=line)
    split = None
    if "split" in optional:
        split = row[optional["split"]].strip()
        if split not in SPLITS:
            raise DataError(csv_path, f"{image_id}: split {_short(split)!r} is not one of {', '.join(SPLITS)}",
                            line=line)
    points.setflags(write=False)
    sample = Sample(image_id=image_id, image_path=path, landmarks_px=points, original_wh=(width, height),
                    stored_wh=(width, height), spacing_mm=spacing)
    return sample, split


def _image_path(csv_path: Path, root: Path, text: str, line: int) -> tuple[str, Path]:
    """The image's id (normalised relative path) and its path; DataError for a bad or missing one."""
    rel = PurePosixPath(text.strip())
    if not text.strip() or rel.is_absolute() or ".." in rel.parts or "\x00" in text or "\\" in text:
        raise DataError(csv_path, f"image must be a relative path inside the dataset folder (/ separators, no "
                                  f"'..'), got {_short(text)!r}", line=line)
    path = root.joinpath(*rel.parts)
    try:
        found = path.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        found = False
    if not found:
        raise DataError(csv_path, f"image file {str(rel)!r} not found in {root}", line=line)
    return rel.as_posix(), path


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _copy_dataset(source: Path, dest: Path, files: list[str]) -> None:
    """Copy ``files`` (relative paths) from ``source`` into a fresh ``dest``, through a temporary folder."""
    if dest.exists() and not (dest / "FETCHED.json").is_file():
        raise DataError(dest, "exists and was not written by fetch; move it away or set datasets.custom.root to it")
    tmp = dest.with_name(dest.name + ".fetching")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, target)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
