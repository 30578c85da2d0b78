"""Reader of the BoostNet / AASCE 2019 spinal anterior-posterior X-rays (Wu et al. 2017; paper §4.1.3).

609 labelled AP radiographs of varying size: the 481 the FARNet paper uses (``data/training``) and the 128
further images of the AASCE 2019 challenge (``data/test``, split "aasce_test" here). Per split folder
``labels/<split_dir>/`` holds ``<image file name>.mat`` (variable ``p2``: (68, 2) uint16 (x, y) pixels),
``filenames.csv`` (image names, which contain spaces), ``landmarks.csv`` (per row the 68 x then the 68 y as
fractions of width/height, in filenames.csv order; it agrees with ``p2`` to 0.04 px) and ``angles.csv``
(three Cobb angles per image, see :func:`farnet.evaluation.spine_metrics.cobb_angles`).

Landmark order: 17 vertebrae (T1-T12, L1-L5) from the top, 4 corners each in the order top-left, top-right,
bottom-left, bottom-right (as seen on the image: left = smaller x). The labels are not always that clean: in 18 of
the 481 training images (3 of the 128 test images) the 17th vertebra of the file lies ABOVE the first (the
file's vertebra order is rotated by one), 24 (4) have some vertebra out of top-to-bottom order, 4 (5) have a
vertebra with top and bottom corners swapped and 2 (0) one with left and right swapped. They are kept as
published: they are the ground truth every method is scored against.

Protocol (paper §4.1.3, docs/design.md §2.2): the 481 are split at random with a fixed seed into 431 train/val and
50 test images, with 5-fold cross-validation on the 431 (:func:`spine_splits`). There is no physical unit:
errors are fractions of the image (:mod:`farnet.evaluation.spine_metrics`), so ``spacing_mm`` is None. Image ids are the
file names without ``.jpg``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.io

from farnet.data.mirror import MIRROR_ENV, clear_partial_files, copy_verified, mirror_folder, write_fetched
from farnet.data.manifest import Manifest
from farnet.data.sample import Sample
from farnet.data.imageio import read_image_size
from farnet.core.errors import DataError

__all__ = [
    "NUM_LANDMARKS",
    "NUM_VERTEBRAE",
    "VERTEBRAE",
    "CORNERS",
    "LANDMARK_NAMES",
    "SPLIT_DIRS",
    "OUTSIDE_TOLERANCE",
    "read_spine_filenames",
    "read_spine_mat",
    "read_fractional_landmarks",
    "read_spine",
    "read_angles",
    "spine_splits",
    "fetch_spine",
]

NUM_VERTEBRAE = 17
VERTEBRAE = tuple([f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)])
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
NUM_LANDMARKS = NUM_VERTEBRAE * len(CORNERS)  # 68
LANDMARK_NAMES = tuple(f"{v}_{c}" for v in VERTEBRAE for c in CORNERS)
SPLIT_DIRS = ("training", "test")
IMAGE_SUFFIX = ".jpg"
# A label may lie slightly outside its image (in the 609 published labels exactly one point does: 57.5 px,
# 2.5 % of the height, below "sunhl-1th-25-Jul-2016-49 A AP"); anything beyond 5 % of the image is an error.
OUTSIDE_TOLERANCE = 0.05


def _check_split_dir(split_dir: str) -> None:
    if split_dir not in SPLIT_DIRS:
        raise ValueError(f"split_dir must be one of {SPLIT_DIRS}, got {split_dir!r}")


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read {what}: {err}") from err


def read_spine_filenames(root: str | Path, split_dir: str) -> list[str]:
    """Image file names of one split folder, ``labels/<split_dir>/filenames.csv``, in file order.

    Raises:
        ValueError: unknown split_dir.
        DataError: the file is missing, empty, or repeats a name (naming the line).
    """
    _check_split_dir(split_dir)
    path = Path(root) / "labels" / split_dir / "filenames.csv"
    names, seen = [], set()
    for line_no, line in enumerate(_read_lines(path, "file list"), start=1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise DataError(path, f"{name!r} is listed twice", line=line_no)
        if "/" in name or "\\" in name or name.startswith("."):
            raise DataError(path, f"{name!r} is not a plain file name", line=line_no)
        seen.add(name)
        names.append(name)
    if not names:
        raise DataError(path, "lists no images")
    return names


def read_spine_mat(path: str | Path, image_wh: tuple[int, int] | None = None,
                   tolerance: float = OUTSIDE_TOLERANCE) -> np.ndarray:
    """Read the 68 landmarks of one image from its ``.mat`` file (variable ``p2``, (x, y) pixels).

    Args:
        path: the .mat file.
        image_wh: (W, H) of the image; when given, every point must lie within the image enlarged by
            ``tolerance`` × its width/height on each side.
        tolerance: allowed overhang as a fraction of the image size.

    Returns:
        (68, 2) float64 (x, y), read-only.

    Raises:
        DataError: naming the file, when it is missing or unreadable, has no ``p2``, ``p2`` is not (68, 2)
            numbers, holds NaN/inf, or a point lies outside the (tolerated) image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "landmark file not found")
    try:
        content = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError) as err:
        raise DataError(path, f"cannot read MATLAB file ({type(err).__name__}: {err})") from err
    if "p2" not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DataError(path, f"no variable 'p2' (found {found})")
    raw = np.asarray(content["p2"])
    if raw.shape != (NUM_LANDMARKS, 2) or not (np.issubdtype(raw.dtype, np.number) and raw.dtype.kind != "c"):
        raise DataError(path, f"p2 must be ({NUM_LANDMARKS}, 2) real numbers, got shape {raw.shape} "
                              f"dtype {raw.dtype}")
    points = raw.astype(np.float64)
    if not np.isfinite(points).all():
        k = int(np.argmax(~np.isfinite(points).all(axis=1)))
        raise DataError(path, f"p2 has a non-finite coordinate at landmark {k}: {points[k].tolist()}")
    if image_wh is not None:
        size = np.asarray(image_wh, dtype=np.float64)
        lo, hi = -0.5 - tolerance * size, size - 0.5 + tolerance * size
        outside = ~((points >= lo) & (points <= hi)).all(axis=1)
        if outside.any():
            k = int(np.argmax(outside))
            raise DataError(path, f"landmark {k} at {points[k].tolist()} lies outside the "
                                  f"{int(size[0])}x{int(size[1])} image by more than {tolerance:.0%} of its size")
    points.setflags(write=False)
    return points


def _read_rows(path: Path, names: Sequence[str], width: int, what: str) -> dict[str, np.ndarray]:
    """One row of ``width`` comma-separated numbers per name of filenames.csv, in that order."""
    rows = [(n, line) for n, line in enumerate(_read_lines(path, what), start=1) if line.strip()]
    if len(rows) != len(names):
        raise DataError(path, f"{len(rows)} rows, but filenames.csv lists {len(names)} images")
    out = {}
    for name, (line_no, line) in zip(names, rows):
        fields = line.split(",")
        try:
            if len(fields) != width:
                raise ValueError
            values = np.array([float(f) for f in fields], dtype=np.float64)
        except ValueError:
            raise DataError(path, f"expected {width} numbers, got {len(fields)} field(s)", line=line_no) from None
        if not np.isfinite(values).all():
            raise DataError(path, "non-finite value", line=line_no)
        values.setflags(write=False)
        out[_image_id(name)] = values
    return out


def _image_id(file_name: str) -> str:
    return file_name[: -len(IMAGE_SUFFIX)] if file_name.lower().endswith(IMAGE_SUFFIX) else file_name


def read_fractional_landmarks(root: str | Path, split_dir: str) -> dict[str, np.ndarray]:
    """``labels/<split_dir>/landmarks.csv``: id -> (68, 2) (x, y) as fractions of the image width/height."""
    names = read_spine_filenames(root, split_dir)
    rows = _read_rows(Path(root) / "labels" / split_dir / "landmarks.csv", names, 2 * NUM_LANDMARKS,
                      "landmark table")
    return {i: np.stack([r[:NUM_LANDMARKS], r[NUM_LANDMARKS:]], axis=1) for i, r in rows.items()}


def read_angles(root: str | Path, split_dir: str) -> dict[str, np.ndarray]:
    """``labels/<split_dir>/angles.csv``: id -> (3,) Cobb angles in degrees.

    The columns are in the order of the AASCE reference code's output (see
    :func:`farnet.evaluation.spine_metrics.cobb_angles`): the largest angle, then the curve above it and the one below.
    """
    names = read_spine_filenames(root, split_dir)
    return _read_rows(Path(root) / "labels" / split_dir / "angles.csv", names, 3, "angle table")


def read_spine(root: str | Path, split_dir: str, *, ids: Iterable[str] | None = None) -> list[Sample]:
    """Read every labelled image of one split folder.

    Args:
        root: dataset folder (``data/`` and ``labels/``).
        split_dir: "training" (the paper's 481) or "test" (the 128 AASCE challenge images).
        ids: only these image ids (file names without .jpg); None = all, in filenames.csv order.

    Returns:
        One :class:`Sample` per image: landmarks (68, 2) in original pixels, ``spacing_mm`` None.

    Raises:
        ValueError: unknown split_dir, or an id not in the split.
        DataError: a missing image or .mat file, or a malformed label (naming the file).
    """
    root = Path(root)
    names = read_spine_filenames(root, split_dir)
    if ids is not None:
        wanted = {str(i) for i in ids}
        unknown = sorted(wanted - {_image_id(n) for n in names})
        if unknown:
            raise ValueError(f"ids not in spine split {split_dir!r}: {unknown[:5]}")
        names = [n for n in names if _image_id(n) in wanted]
    samples = []
    for name in names:
        image_path = root / "data" / split_dir / name
        size = read_image_size(image_path)
        landmarks = read_spine_mat(root / "labels" / split_dir / f"{name}.mat", size)
        samples.append(Sample(image_id=_image_id(name), image_path=image_path, landmarks_px=landmarks,
                              original_wh=size, stored_wh=size, spacing_mm=None, scale_xy=(1.0, 1.0)))
    return samples


def spine_splits(ids: Iterable[str], seed: int, n_test: int = 50, n_folds: int = 5) -> dict[str, list[str]]:
    """The paper's protocol on the 481 training images: a seeded random 431/50 split, 5 folds on the 431.

    The ids are sorted first, so the split depends only on the set of ids and the seed. Folds are as equal
    as possible (431 = 87 + 86 × 4).

    Args:
        ids: the image ids (the 481 of ``data/training``).
        seed: seed of the permutation (``numpy.random.default_rng``).
        n_test: held-out test images.
        n_folds: cross-validation folds on the rest.

    Returns:
        {"test", "trainval", "fold1_train", "fold1_val", ..., "fold{n}_val"} -> sorted id lists; the
        validation folds are disjoint and cover "trainval"; fold k's train is trainval minus its val.

    Raises:
        ValueError: repeated ids, or too few ids for n_test and n_folds.
    """
    ids = sorted(str(i) for i in ids)
    if len(set(ids)) != len(ids):
        raise ValueError("spine_splits: ids are not unique")
    if n_test < 0 or n_folds < 2 or len(ids) - n_test < n_folds:
        raise ValueError(f"cannot split {len(ids)} ids into {n_test} test images and {n_folds} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    test, trainval = shuffled[:n_test], shuffled[n_test:]
    splits = {"test": sorted(test), "trainval": sorted(trainval)}
    for k, val in enumerate(np.array_split(np.array(trainval, dtype=object), n_folds), start=1):
        val_set = set(val.tolist())
        splits[f"fold{k}_train"] = sorted(i for i in trainval if i not in val_set)
        splits[f"fold{k}_val"] = sorted(val_set)
    return splits


def fetch_spine(dest: str | Path, mirror: str | Path | None, *, progress: bool = True,
                manifest: str | Path | None = None) -> dict:
    """Copy the spine dataset from its mirror into dest, verifying every file (docs/design.md §2.1).

    The mirror must hold exactly the files of the committed manifest (``farnet/data/manifests/
    spine_boostnet.sha256``): every image, its .mat, the three tables per split folder and README.txt. Each
    copy is checked against its sha256, and all are recorded in ``dest/FETCHED.json``.

    Args:
        dest: folder to fill.
        mirror: the dataset's mirror folder (``$FARNET_DATA_MIRROR/spine_boostnet``), or None.
        progress: show a progress bar.
        manifest: the expected sha256 of every file; None = the committed one.

    Returns:
        {"source": "mirror", "mirror": str, "n_images": 609, "n_images_by_split": {"training": 481,
        "test": 128}, "files": int}.

    Raises:
        DataError: no mirror (the message says where to get the data), a missing or unlisted file, or a hash
            mismatch, naming the file.
    """
    dest = Path(dest)
    if mirror is None:
        raise DataError(dest, "the BoostNet/AASCE spine data cannot be downloaded by script. Get SpineWeb "
                              "dataset 16 (http://spineweb.digitalimaginggroup.ca, 'boostnet_labeldata') and put "
                              f"data/<training|test>/*.jpg and labels/<training|test>/ in {dest}, or point "
                              f"{MIRROR_ENV} at a folder holding spine_boostnet/")
    mirror = mirror_folder(mirror)
    expected = Manifest.load("spine_boostnet", manifest)
    expected.check_listing(mirror)
    clear_partial_files(dest)
    hashes = copy_verified(mirror, dest, expected.entries(), progress=progress, desc="spine_boostnet")
    counts = {split_dir: len(read_spine_filenames(dest, split_dir)) for split_dir in SPLIT_DIRS}
    summary = {"source": "mirror", "mirror": str(mirror), "n_images": sum(counts.values()),
               "n_images_by_split": counts, "files": len(hashes)}
    return write_fetched(dest, summary, hashes)
