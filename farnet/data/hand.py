"""Reader of the Digital Hand Atlas radiographs with Payer et al.'s 37 landmarks (paper §4.1.2).

Payer et al. (MedIA 2019) annotated 895 left-hand radiographs of the Digital Hand Atlas with 37 landmarks
(fingertips and bone joints) and published a 3-fold cross-validation split; the FARNet paper follows both.
Layout (the project's mirror, and Payer et al.'s ``hand_xray_dataset`` folder with the DHA images added):

- ``setup/all.csv``: one row per image, ``id, x1, y1, ..., x37, y37`` in ORIGINAL pixels (0-based, pixel
  centres at integers). It has 910 rows: the 895 images of the split plus 15 annotated but unused ones.
- ``setup/cv/set{1,2,3}/{train,test}.txt``: one image id per line.
- ``images/<id>.png`` or ``.jpg``: the radiographs. The mirror holds ONLY 9 of the 895 (``images.json`` gives
  their sizes and sha256); the full set comes from the DHA as JPEGs. Readers use whatever subset is present
  and :func:`hand_counts` says how many of the listed ids that is.

Physical unit (Payer et al.): the images carry no pixel spacing, so each image is scaled such that its wrist
width, the distance between landmarks 1 and 5 (0-based), is 50 mm: spacing_mm = 50 / ||p1 − p5||
(:func:`wrist_spacing_mm`). The ``ElementSpacing`` of the 9 sample images Payer et al. ship as .mha files
agrees with this to 4 significant digits.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from farnet.data.fetch import MIRROR_ENV, copy_verified, sha256_file
from farnet.data.sample import Sample
from farnet.data.imageio import read_image_size
from farnet.errors import DataError
from farnet.fileio import write_json

__all__ = [
    "NUM_LANDMARKS",
    "LANDMARK_NAMES",
    "WRIST_WIDTH_MM",
    "WRIST_LANDMARKS",
    "FOLDS",
    "SPLITS",
    "IMAGE_SUFFIXES",
    "wrist_spacing_mm",
    "read_hand_annotations",
    "hand_fold_ids",
    "find_hand_image",
    "hand_counts",
    "read_hand",
    "fetch_hand",
]

log = logging.getLogger(__name__)

NUM_LANDMARKS = 37
# Payer et al. publish no names for the 37 points (fingertips, finger joints, carpal and wrist points).
LANDMARK_NAMES = tuple(f"L{i}" for i in range(1, NUM_LANDMARKS + 1))
WRIST_WIDTH_MM = 50.0
WRIST_LANDMARKS = (1, 5)  # 0-based indices of the two wrist points
FOLDS = (1, 2, 3)
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
ANNOTATION_FILE = "setup/all.csv"
IMAGE_INFO_FILE = "images.json"


def wrist_spacing_mm(landmarks_px: np.ndarray) -> float:
    """mm per original pixel of one hand image: 50 mm / ||p1 − p5|| (Payer et al.'s wrist-width normalisation).

    Args:
        landmarks_px: (37, 2) (x, y) in original pixels (any (K, 2) with K > 5 works).

    Raises:
        ValueError: wrong shape, non-finite points, or the two wrist points coincide.
    """
    points = np.asarray(landmarks_px, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] <= max(WRIST_LANDMARKS):
        raise ValueError(f"expected (K, 2) landmarks with K > {max(WRIST_LANDMARKS)}, got {points.shape}")
    first, second = points[WRIST_LANDMARKS[0]], points[WRIST_LANDMARKS[1]]
    width_px = float(np.hypot(*(first - second)))
    if not math.isfinite(width_px) or width_px <= 0:
        raise ValueError(f"wrist width undefined: landmarks {WRIST_LANDMARKS} are {first.tolist()} and "
                         f"{second.tolist()}")
    return WRIST_WIDTH_MM / width_px


def read_hand_annotations(path: str | Path) -> dict[str, np.ndarray]:
    """Read Payer et al.'s ``all.csv``: ``id, x1, y1, ..., x37, y37`` per row, original pixels.

    Returns:
        id -> (37, 2) float64 (x, y), read-only, in file order.

    Raises:
        DataError: naming the file and the 1-based line, for a row without exactly 1 + 74 values, an empty
            value (a missing landmark), a value that is not a finite number, a repeated id, or coinciding
            wrist points; naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(path, "annotation file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read annotation file: {err}") from err
    expected = 1 + 2 * NUM_LANDMARKS
    annotations: dict[str, np.ndarray] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != expected:
            raise DataError(path, f"expected {expected} values (id and {NUM_LANDMARKS} x,y pairs), "
                                  f"found {len(fields)}", line=line_no)
        image_id, values = fields[0], fields[1:]
        if not image_id:
            raise DataError(path, "empty image id", line=line_no)
        missing = [i // 2 for i, v in enumerate(values) if not v]
        if missing:
            raise DataError(path, f"image {image_id}: missing value(s) for landmark(s) "
                                  f"{sorted(set(missing))} (0-based)", line=line_no)
        try:
            points = np.array([float(v) for v in values], dtype=np.float64).reshape(NUM_LANDMARKS, 2)
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            raise DataError(path, f"image {image_id}: {bad!r} is not a number", line=line_no) from None
        if not np.isfinite(points).all():
            raise DataError(path, f"image {image_id}: non-finite coordinate", line=line_no)
        if image_id in annotations:
            raise DataError(path, f"image {image_id} is listed twice", line=line_no)
        try:
            wrist_spacing_mm(points)
        except ValueError as err:
            raise DataError(path, f"image {image_id}: {err}", line=line_no) from None
        points.setflags(write=False)
        annotations[image_id] = points
    if not annotations:
        raise DataError(path, "no annotation rows")
    return annotations


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_fold(fold: int, split: str) -> None:
    if fold not in FOLDS or isinstance(fold, bool):
        raise ValueError(f"fold must be one of {FOLDS}, got {fold!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def hand_fold_ids(root: str | Path, fold: int, split: str) -> list[str]:
    """The image ids of one cross-validation fold, ``setup/cv/set{fold}/{split}.txt``, in file order.

    Args:
        root: dataset folder.
        fold: 1, 2 or 3.
        split: "train" or "test".

    Raises:
        ValueError: unknown fold or split.
        DataError: the file is missing or unreadable, or repeats an id (naming the line).
    """
    _check_fold(fold, split)
    path = Path(root) / "setup" / "cv" / f"set{fold}" / f"{split}.txt"
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(path, "fold file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read fold file: {err}") from err
    ids, seen = [], set()
    for line_no, line in enumerate(lines, start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if image_id in seen:
            raise DataError(path, f"image {image_id} is listed twice", line=line_no)
        seen.add(image_id)
        ids.append(image_id)
    if not ids:
        raise DataError(path, "fold file lists no image ids")
    return ids


def find_hand_image(root: str | Path, image_id: str) -> Path | None:
    """``images/<id>`` with the first suffix of :data:`IMAGE_SUFFIXES` that exists, or None."""
    folder = Path(root) / "images"
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{image_id}{suffix}"
        if path.is_file():
            return path
    return None


def hand_counts(root: str | Path, fold: int | None = None, split: str | None = None) -> dict:
    """How many of the listed images are present.

    Args:
        root: dataset folder.
        fold, split: one fold's list; both None = the 895 images of the cross-validation protocol
            (set1 train ∪ test).

    Returns:
        {"listed": int, "present": int, "annotated": rows of all.csv, "missing_annotations": [ids listed
        without an all.csv row]}.
    """
    root = Path(root)
    if (fold is None) != (split is None):
        raise ValueError("give both fold and split, or neither")
    ids = (hand_fold_ids(root, fold, split) if fold is not None
           else hand_fold_ids(root, FOLDS[0], "train") + hand_fold_ids(root, FOLDS[0], "test"))
    annotations = read_hand_annotations(root / ANNOTATION_FILE)
    return {
        "listed": len(ids),
        "present": sum(find_hand_image(root, i) is not None for i in ids),
        "annotated": len(annotations),
        "missing_annotations": [i for i in ids if i not in annotations],
    }


def _load_image_info(root: Path) -> dict[str, dict]:
    """``images.json`` (the mirror's sizes and hashes) or {} when the folder has none."""
    path = root / IMAGE_INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
            raise TypeError("expected an object of objects keyed by image id")
        return info
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise DataError(path, f"malformed image list: {type(err).__name__}: {err}") from err


def read_hand(root: str | Path, fold: int, split: str) -> list[Sample]:
    """Read one fold of Payer et al.'s 3-fold cross-validation, keeping only the images present.

    Absent images are skipped, never an error: the mirror holds 9 of the 895. :func:`hand_counts` (and the
    log) say how many of the fold's ids were found.

    Args:
        root: dataset folder (``setup/`` and ``images/``).
        fold: 1, 2 or 3.
        split: "train" or "test".

    Returns:
        One :class:`Sample` per present image, in fold-file order: landmarks (37, 2) in original pixels,
        ``spacing_mm`` = 50 / wrist width, stored = original size.

    Raises:
        ValueError: unknown fold or split.
        DataError: malformed annotations or fold file; an id of the fold without an all.csv row (naming the
            fold file and line); an unreadable image; an image whose size disagrees with images.json; a
            landmark outside its image.
    """
    root = Path(root)
    ids = hand_fold_ids(root, fold, split)
    annotations = read_hand_annotations(root / ANNOTATION_FILE)
    fold_file = root / "setup" / "cv" / f"set{fold}" / f"{split}.txt"
    unannotated = [i for i in ids if i not in annotations]
    if unannotated:
        raise DataError(fold_file, f"{len(unannotated)} listed image(s) have no row in {ANNOTATION_FILE}: "
                                   f"{unannotated[:5]}")
    info = _load_image_info(root)
    samples = []
    for image_id in ids:
        path = find_hand_image(root, image_id)
        if path is None:
            continue
        size = read_image_size(path)
        listed = info.get(image_id)
        if listed is not None and (listed.get("width"), listed.get("height")) != size:
            raise DataError(path, f"image is {size[0]}x{size[1]} but {IMAGE_INFO_FILE} says "
                                  f"{listed.get('width')}x{listed.get('height')}")
        landmarks = annotations[image_id]
        width, height = size
        outside = ~((landmarks >= -0.5) & (landmarks <= np.array([width, height]) - 0.5)).all(axis=1)
        if outside.any():
            k = int(np.argmax(outside))
            raise DataError(root / ANNOTATION_FILE, f"image {image_id}: landmark {k} at "
                                                    f"{landmarks[k].tolist()} lies outside its {width}x{height} image")
        samples.append(Sample(image_id=image_id, image_path=path, landmarks_px=landmarks, original_wh=size,
                              stored_wh=size, spacing_mm=wrist_spacing_mm(landmarks), scale_xy=(1.0, 1.0)))
    log.info("hand fold %d %s: %d of %d listed images present", fold, split, len(samples), len(ids))
    return samples


def fetch_hand(dest: str | Path, mirror: str | Path | None, *, progress: bool = True) -> dict:
    """Copy the hand dataset from its mirror into dest, verifying every file (DESIGN §2.1).

    Images are checked against the sha256 sums of the mirror's ``images.json`` (without one, e.g. a mirror
    holding the full DHA set, every ``images/*.png|jpg`` is copied and its hash recorded); the annotation,
    fold and info files have no published hash, so the mirror's is computed and the copy checked against it.
    Writes ``dest/FETCHED.json``: the summary plus every file's sha256.

    Args:
        dest: folder to fill.
        mirror: the dataset's mirror folder (``$FARNET_DATA_MIRROR/hand_dha``), or None.
        progress: show a progress bar.

    Returns:
        {"source": "mirror", "mirror": str, "n_images": images copied, "images_listed": 895,
        "images_present": images copied that the split lists, "note": str, "files": int}.

    Raises:
        DataError: no mirror (the message says where to get the data), a missing file or a hash mismatch.
    """
    dest = Path(dest)
    if mirror is None:
        raise DataError(dest, "the Digital Hand Atlas cannot be downloaded by script. Get the images from "
                              "www.ipilab.org/BAAweb (Digital Hand Atlas Database System) and Payer et "
                              "al.'s annotations and split (setup/all.csv, setup/cv/) from github "
                              "christianpayer/MedicalDataAugmentationTool-HeatmapRegression "
                              "(hand_xray/hand_xray_dataset/setup); put them in "
                              f"{dest}/images/<id>.jpg and {dest}/setup/, or point {MIRROR_ENV} at a folder "
                              "holding hand_dha/")
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise DataError(mirror, f"mirror folder not found (check {MIRROR_ENV})")
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.rglob(".*.tmp"):  # temporary files of an interrupted fetch
        stale.unlink()
    info = _load_image_info(mirror)
    if info:
        entries = []
        for image_id, entry in info.items():
            path = find_hand_image(mirror, image_id)
            if path is None:
                raise DataError(mirror / IMAGE_INFO_FILE, f"image {image_id} is listed but not in images/")
            if not isinstance(entry.get("sha256"), str):
                raise DataError(mirror / IMAGE_INFO_FILE, f"image {image_id} has no sha256")
            entries.append((path.relative_to(mirror).as_posix(), entry["sha256"]))
    else:
        entries = [(p.relative_to(mirror).as_posix(), None) for p in sorted((mirror / "images").glob("*"))
                   if p.suffix in IMAGE_SUFFIXES]
    hashes = copy_verified(mirror, dest, entries, progress=progress, desc="hand_dha")
    if not (mirror / ANNOTATION_FILE).is_file():
        raise DataError(mirror / ANNOTATION_FILE, "mirror has no annotation file")
    text_files = [ANNOTATION_FILE] + sorted(p.relative_to(mirror).as_posix()
                                            for p in (mirror / "setup" / "cv").rglob("*.txt"))
    text_files += [name for name in (IMAGE_INFO_FILE, "README.txt") if (mirror / name).is_file()]
    # No published hash for these: hash the mirror's copy, so the copy is verified and re-runs skip it.
    hashes.update(copy_verified(mirror, dest, [(rel, sha256_file(mirror / rel)) for rel in text_files],
                                progress=False))
    counts = hand_counts(dest)
    summary = {
        "source": "mirror", "mirror": str(mirror), "n_images": len(entries),
        "images_listed": counts["listed"], "images_present": counts["present"],
        "note": f"the mirror holds {counts['present']} of the {counts['listed']} images of Payer et al.'s split",
        "files": len(hashes),
    }
    write_json(dest / "FETCHED.json", {**summary, "sha256": dict(sorted(hashes.items()))})
    return summary
