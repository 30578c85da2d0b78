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

from farnet.data.mirror import MIRROR_ENV, clear_partial_files, copy_verified, mirror_folder, write_fetched
from farnet.data.manifest import Manifest
from farnet.data.sample import Sample
from farnet.data.imageio import read_image_size
from farnet.core.errors import DataError

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


def _split_ids(root: Path) -> set[str]:
    """Every image id of the three folds' train and test files."""
    return {i for fold in FOLDS for split in SPLITS for i in hand_fold_ids(root, fold, split)}


def _mirror_files(mirror: Path, manifest: Manifest) -> tuple[list[str], list[str]]:
    """(listed files to copy, unlisted images to copy unverified) of a hand mirror, or DataError.

    Payer et al.'s published files (``setup/``) are required. The project mirror's own files (its 9 PNGs,
    images.json, README.txt) come all or none, so a folder holding the full Digital Hand Atlas instead
    passes. An unlisted file is an error unless it is ``images/<id>.<png|jpg>`` of an id of the split.
    """
    missing, unlisted = manifest.compare(mirror)
    own_present = {rel for rel in manifest.sha256 if not rel.startswith("setup/")} - set(missing)
    required = [rel for rel in missing if rel.startswith("setup/") or own_present]
    if required:
        raise manifest.missing_error(mirror, required)
    ids = _split_ids(mirror)
    unverified = [rel for rel in unlisted if Path(rel).parent == Path("images")
                  and Path(rel).suffix in IMAGE_SUFFIXES and Path(rel).stem in ids]
    others = [rel for rel in unlisted if rel not in set(unverified)]
    if others:
        raise manifest.unlisted_error(mirror, others)
    return sorted(set(manifest.sha256) - set(missing)), unverified


def fetch_hand(dest: str | Path, mirror: str | Path | None, *, progress: bool = True,
               manifest: str | Path | None = None) -> dict:
    """Copy the hand dataset from its mirror into dest, verifying every file the project knows (docs/design.md §2.1).

    Every file is checked against the committed manifest (``farnet/data/manifests/hand_dha.sha256``):
    Payer et al.'s ``setup/all.csv`` and fold files, which must be present, and the project mirror's own
    files (its 9 PNGs, ``images.json``, ``README.txt``), which must be all present or all absent. Images of
    the split that the manifest does not list (the Digital Hand Atlas JPEGs of a full copy) are copied and
    hashed but cannot be verified: FETCHED.json lists them under "unverified" and a warning says so. Any
    other unlisted file is an error. Writes ``dest/FETCHED.json``: the summary plus every file's sha256.

    Args:
        dest: folder to fill.
        mirror: the dataset's mirror folder (``$FARNET_DATA_MIRROR/hand_dha``), or None.
        progress: show a progress bar.
        manifest: the expected sha256 of the files; None = the committed one.

    Returns:
        {"source": "mirror", "mirror": str, "n_images": images copied, "images_listed": 895,
        "images_present": images copied that the split lists, "unverified_images": int, "note": str,
        "files": int}.

    Raises:
        DataError: no mirror (the message says where to get the data), a missing or unlisted file, or a hash
            mismatch, naming the file.
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
    mirror = mirror_folder(mirror)
    expected = Manifest.load("hand_dha", manifest)
    listed, unverified = _mirror_files(mirror, expected)
    clear_partial_files(dest)
    hashes = copy_verified(mirror, dest, expected.entries(listed), progress=progress, desc="hand_dha")
    if unverified:
        # deviation: docs/design.md §2.1 verifies every file; the Digital Hand Atlas publishes no checksums, so the
        # images of a full copy are recorded, not verified.
        log.warning("hand_dha: %d images are not in %s; copied and hashed but not verified", len(unverified),
                    expected.path)
        hashes.update(copy_verified(mirror, dest, [(rel, None) for rel in unverified], progress=progress,
                                    desc="hand_dha (unverified)"))
    return write_fetched(dest, _fetch_summary(dest, mirror, hashes, unverified), hashes, unverified=unverified)


def _fetch_summary(dest: Path, mirror: Path, hashes: dict[str, str], unverified: list[str]) -> dict:
    """What :func:`fetch_hand` returns: the images copied, and how many of Payer et al.'s split they are."""
    counts = hand_counts(dest)
    n_images = sum(1 for rel in hashes if rel.startswith("images/") and Path(rel).suffix in IMAGE_SUFFIXES)
    return {
        "source": "mirror", "mirror": str(mirror), "n_images": n_images,
        "images_listed": counts["listed"], "images_present": counts["present"],
        "unverified_images": len(unverified),
        "note": f"the mirror holds {counts['present']} of the {counts['listed']} images of Payer et al.'s split"
                + (f"; {len(unverified)} have no committed sha256" if unverified else ""),
        "files": len(hashes),
    }
