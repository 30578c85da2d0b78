"""Reader of the ISBI 2015 cephalometric landmark dataset (Wang et al. 2016; paper §4.1).

400 lateral cephalograms of 1935×2400 pixels at 0.1 mm/pixel, 19 landmarks each, annotated by a senior and
a junior doctor. Two layouts are accepted:

- the original: ``RawImage/<split>/NNN.bmp`` at full size (scale 1), no manifest;
- the project's mirror: ``RawImage/<split>/NNN.jpg`` at half size (968×1200) with ``MANIFEST.json`` giving
  each image's stored/original scale (0.5) and original size (the mirror padded one column to 1936 before
  halving, so W_stored/scale = 1936, not 1935).

Both keep the annotations ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt``: the first 19 lines are
"x,y" in ORIGINAL pixel coordinates (0-based, pixel centres at integers); later lines are ignored. A sample
stores its landmarks in original pixels; a point in the stored image is x_s = (x + 0.5)·scale − 0.5.
Reading samples never decodes an image (only its header, to check its size).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from farnet.data.sample import Sample
from farnet.data.imageio import read_image_size
from farnet.core.errors import DataError

__all__ = [
    "NUM_LANDMARKS",
    "SPACING_MM",
    "ORIGINAL_WH",
    "LANDMARK_NAMES",
    "ISBI_SPLITS",
    "ANNOTATORS",
    "Sample",
    "read_annotation",
    "read_isbi2015",
]

NUM_LANDMARKS = 19
SPACING_MM = 0.1  # per ORIGINAL pixel, both axes
ORIGINAL_WH = (1935, 2400)
LANDMARK_NAMES = (
    "sella", "nasion", "orbitale", "porion", "subspinale", "supramentale", "pogonion", "menton", "gnathion",
    "gonion", "lower incisal incision", "upper incisal incision", "upper lip", "lower lip", "subnasale",
    "soft tissue pogonion", "posterior nasal spine", "anterior nasal spine", "articulare",
)


class IsbiSplit(NamedTuple):
    """One official split: its image folder and inclusive range of image numbers."""

    folder: str
    first: int
    last: int

    @property
    def ids(self) -> list[str]:
        return [f"{i:03d}" for i in range(self.first, self.last + 1)]


ISBI_SPLITS = {
    "train": IsbiSplit("TrainingData", 1, 150),
    "test1": IsbiSplit("Test1Data", 151, 300),
    "test2": IsbiSplit("Test2Data", 301, 400),
}
ANNOTATORS = ("mean", "senior", "junior")  # mean of both doctors is the paper's ground truth
_ANNOTATION_FOLDERS = {"senior": "400_senior", "junior": "400_junior"}
# A plain decimal number as a CSV writer produces it. Python's float() also takes "1_000", non-ASCII digits and
# "infinity", so a corrupted byte (a digit turned into "_") would otherwise give a silently different value.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf)", re.IGNORECASE | re.ASCII)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # str.splitlines() also splits at \f, \x1c, \u2028 ... inside a line


def _parse_number(text: str) -> float:
    """float() of a plain decimal number (surrounding spaces allowed); ValueError otherwise."""
    text = text.strip(" \t")
    if not _NUMBER.fullmatch(text):
        raise ValueError(text)
    return float(text)


def read_annotation(path: str | Path, num_landmarks: int = NUM_LANDMARKS,
                    image_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Read an ISBI annotation file: the first ``num_landmarks`` lines are "x,y" in original pixels.

    Lines after the first ``num_landmarks`` (the official files may carry extra lines) are ignored.

    Args:
        path: the .txt file.
        num_landmarks: K, lines to read.
        image_wh: (W, H) of the original image; when given, every point must lie inside it
            (−0.5 ≤ x ≤ W − 0.5, likewise y).

    Returns:
        (K, 2) float64 (x, y).

    Raises:
        DataError: naming the file and the 1-based line, for a missing line, a line that is not two
            numbers, NaN/inf, or a point outside the image; or naming the file if it cannot be read.
    """
    path = Path(path)
    try:
        lines = _LINE_BREAK.split(path.read_text(encoding="utf-8-sig").removesuffix("\n").removesuffix("\r"))
    except FileNotFoundError:
        raise DataError(path, "annotation file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read annotation file: {err}") from err
    points = np.empty((num_landmarks, 2), dtype=np.float64)  # (K, 2)
    for index in range(num_landmarks):
        line_no = index + 1
        text = lines[index].strip(" \t") if index < len(lines) else ""
        if not text:
            found = sum(1 for line in lines[:num_landmarks] if line.strip(" \t"))
            raise DataError(path, f"expected {num_landmarks} lines 'x,y', found {found} (line {line_no} is "
                                  f"{'empty' if index < len(lines) else 'missing'})", line=line_no)
        fields = text.split(",")
        try:
            if len(fields) != 2:
                raise ValueError
            x, y = _parse_number(fields[0]), _parse_number(fields[1])
        except ValueError:
            raise DataError(path, f"expected 'x,y' (two numbers), got {text!r}", line=line_no) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(path, f"non-finite coordinate {text!r}", line=line_no)
        if image_wh is not None:
            width, height = image_wh
            if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
                raise DataError(path, f"point ({x:g}, {y:g}) outside the {width}x{height} image", line=line_no)
        points[index] = x, y
    return points


def _check_choice(name: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _load_manifest(path: Path) -> dict[str, dict]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return {str(entry["id"]): entry for entry in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:  # ValueError: JSON or UTF-8
        raise DataError(path, f"malformed manifest: {type(err).__name__}: {err}") from err


def _image_geometry(root: Path, image_id: str, split: IsbiSplit, manifest: dict[str, dict] | None,
                    manifest_path: Path) -> tuple[Path, tuple[int, int], tuple[int, int], tuple[float, float]]:
    """(image path, original (W, H), stored (W, H), scale (x, y)) of one image in either layout."""
    if manifest is None:  # original layout: full-size BMPs
        path = root / "RawImage" / split.folder / f"{image_id}.bmp"
        size = read_image_size(path)
        if size != ORIGINAL_WH:
            raise DataError(path, f"original-layout image is {size[0]}x{size[1]}, expected "
                                  f"{ORIGINAL_WH[0]}x{ORIGINAL_WH[1]} (or give a MANIFEST.json with its scale)")
        return path, ORIGINAL_WH, size, (1.0, 1.0)
    entry = manifest.get(image_id)
    if entry is None:
        raise DataError(manifest_path, f"image {image_id} is not listed")
    try:
        rel = Path(entry["path"])
        original = (int(entry["original_width"]), int(entry["original_height"]))
        stored = (int(entry["stored_width"]), int(entry["stored_height"]))
        scale = (float(entry["scale_x"]), float(entry["scale_y"]))
    except (KeyError, TypeError, ValueError, OverflowError) as err:  # OverflowError: int(1e400)
        raise DataError(manifest_path, f"malformed entry for image {image_id}: {type(err).__name__}: {err}") from err
    if (rel.is_absolute() or ".." in rel.parts or "\x00" in str(rel)
            or not all(math.isfinite(s) and s > 0 for s in (*original, *stored, *scale))):
        raise DataError(manifest_path, f"bad entry for image {image_id}: path {str(rel)!r}, sizes "
                                       f"{original}/{stored}, scale {scale}")
    path = root / rel
    size = read_image_size(path)
    if size != stored:
        raise DataError(path, f"image is {size[0]}x{size[1]} but the manifest says {stored[0]}x{stored[1]}")
    return path, original, stored, scale


def read_isbi2015(root: str | Path, split: str, annotator: str = "mean",
                  *, ids: Iterable[str] | None = None) -> list[Sample]:
    """Read one split of ISBI 2015 (train 001–150, test1 151–300, test2 301–400).

    Args:
        root: dataset folder (mirror layout with MANIFEST.json, or the original BMP layout).
        split: "train", "test1" or "test2".
        annotator: ground truth: "mean" of both doctors (the paper), "senior" or "junior".
        ids: only these image ids of the split (e.g. for a quick profile); None = the whole split.

    Returns:
        One :class:`Sample` per image, in id order, landmarks (19, 2) in original pixels, 0.1 mm/px.

    Raises:
        ValueError: unknown split or annotator, or an id outside the split.
        DataError: a missing or malformed image, annotation or manifest, naming the file.
    """
    root = Path(root)
    _check_choice("split", split, ISBI_SPLITS)
    _check_choice("annotator", annotator, ANNOTATORS)
    spec = ISBI_SPLITS[split]
    wanted = spec.ids
    if ids is not None:
        chosen = sorted({str(i) for i in ids})
        outside = [i for i in chosen if i not in wanted]
        if outside:
            raise ValueError(f"ids {outside} are not in split {split!r} ({wanted[0]}-{wanted[-1]})")
        wanted = chosen
    manifest_path = root / "MANIFEST.json"
    manifest = _load_manifest(manifest_path) if manifest_path.is_file() else None
    folders = [_ANNOTATION_FOLDERS[a] for a in (("senior", "junior") if annotator == "mean" else (annotator,))]

    samples = []
    for image_id in wanted:
        path, original_wh, stored_wh, scale = _image_geometry(root, image_id, spec, manifest, manifest_path)
        annotations = [read_annotation(root / "AnnotationsByMD" / folder / f"{image_id}.txt",
                                       NUM_LANDMARKS, original_wh) for folder in folders]
        landmarks = np.mean(annotations, axis=0)  # (K, 2); mean of both doctors, or the one chosen
        landmarks.setflags(write=False)
        samples.append(Sample(image_id=image_id, image_path=path, landmarks_px=landmarks,
                              original_wh=original_wh, stored_wh=stored_wh, spacing_mm=SPACING_MM,
                              scale_xy=scale))
    return samples
