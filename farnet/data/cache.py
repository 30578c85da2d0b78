"""The prepare stage's cache: every image decoded once and stored at the network input size (docs/design.md §2.2).

A cache folder holds ``images.npy`` (N, H, W) uint8, memory-mappable so training reads only the images it
needs; ``landmarks.npy`` (N, K, 2) float32 in input pixels; and ``meta.json`` with ids, sizes, spacing, the
exact original landmarks and the per-image affine map back to original pixels. It is generic: any list of
:class:`~farnet.data.sample.Sample` works.

Landmarks go from ORIGINAL pixels to input pixels in one step through the stored image:
x_s = (x + 0.5)·scale − 0.5 and x_in = (x_s + 0.5)·W_in/W_s − 0.5, so x_in = (x + 0.5)/a − 0.5 with
a = W_s/(scale·W_in), and back x = (x_in + 0.5)·a − 0.5. The cache is written to a temporary folder and
renamed into place, so an interrupted prepare leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from farnet.data.imageio import read_grayscale, resize_grayscale
from farnet.core.coords import rescale_points
from farnet.data.sample import Sample
from farnet.core.errors import DataError, WriteError

__all__ = ["Cache", "build_cache", "load_cache", "cache_from_arrays", "input_to_original_scale", "replace_folder",
           "staged_folder"]

_FILES = ("images.npy", "landmarks.npy", "meta.json")
FORMAT_VERSION = 1


def input_to_original_scale(sample: Sample, input_hw: tuple[int, int]) -> tuple[float, float]:
    """The (ax, ay) with x_orig = (x_in + 0.5)·ax − 0.5 for this sample resized to input_hw (H, W)."""
    scale_x, scale_y = sample.stored_scale_xy
    stored_w, stored_h = sample.stored_wh
    return stored_w / (scale_x * input_hw[1]), stored_h / (scale_y * input_hw[0])


@dataclass(frozen=True, eq=False)
class Cache:
    """A loaded cache folder.

    Attributes:
        images: (N, H, W) uint8, memory-mapped read-only.
        landmarks: (N, K, 2) float32, input pixel coordinates.
        ids: N image ids.
        input_to_original: (N, 2) float64 (ax, ay): x_orig = (x_in + 0.5)·ax − 0.5.
        landmarks_original: (N, K, 2) float64, original pixels (exact, for evaluation).
        spacing_mm: (N,) float64 mm per original pixel, NaN where the dataset has none.
        original_wh: (N, 2) int64.
        input_hw: (H, W).
        source_files: N image paths relative to ``meta["source_root"]``.
        meta: the whole meta.json.
    """

    images: np.ndarray
    landmarks: np.ndarray
    ids: list[str]
    input_to_original: np.ndarray
    landmarks_original: np.ndarray
    spacing_mm: np.ndarray
    original_wh: np.ndarray
    input_hw: tuple[int, int]
    source_files: list[str]
    meta: dict

    def __len__(self) -> int:
        return len(self.ids)


def build_cache(samples: Sequence[Sample], out_dir: str | Path, input_hw: tuple[int, int],
                *, progress: bool = True) -> Path:
    """Decode, resize and store every sample at the input size (the prepare stage).

    Args:
        samples: images with landmarks in original pixels; all with the same K.
        out_dir: cache folder to (re)create.
        input_hw: network input (H, W), e.g. (800, 640) for ISBI.
        progress: show a tqdm bar.

    Returns:
        out_dir.

    Raises:
        DataError: an image cannot be decoded, or its size differs from ``sample.stored_wh``.
        ValueError: no samples, mixed landmark counts, or a bad input_hw.
    """
    out_dir = Path(out_dir)
    num_landmarks = _check_samples(samples, input_hw)
    height, width = input_hw
    with staged_folder(out_dir) as tmp:
        scales = np.array([input_to_original_scale(s, (height, width)) for s in samples])  # (N, 2)
        landmarks_original = np.stack([s.landmarks_px for s in samples]).astype(np.float64)  # (N, K, 2)
        to_input = np.array([[s.stored_scale_xy[0] * width / s.stored_wh[0],
                              s.stored_scale_xy[1] * height / s.stored_wh[1]] for s in samples])  # (N, 2)
        landmarks_in = rescale_points(landmarks_original, to_input[:, None, :])  # (N, K, 2)
        _write_images(samples, tmp / "images.npy", (height, width), progress)
        np.save(tmp / "landmarks.npy", landmarks_in.astype(np.float32))
        source_root = Path(os.path.commonpath([os.path.abspath(s.image_path.parent) for s in samples]))
        meta = {
            "format_version": FORMAT_VERSION,
            "ids": [s.image_id for s in samples],
            "input_hw": [height, width],
            "num_landmarks": num_landmarks,
            "spacing_mm": [s.spacing_mm for s in samples],
            "original_wh": [list(s.original_wh) for s in samples],
            "stored_wh": [list(s.stored_wh) for s in samples],
            "input_to_original": scales.tolist(),
            "landmarks_original": landmarks_original.tolist(),
            "source_root": str(source_root),
            "source_files": [Path(os.path.abspath(s.image_path)).relative_to(source_root).as_posix()
                             for s in samples],
        }
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
    return out_dir


def _check_samples(samples: Sequence[Sample], input_hw: tuple[int, int]) -> int:
    """The landmark count K shared by every sample, or ValueError (see :func:`build_cache`)."""
    if not samples:
        raise ValueError("build_cache needs at least one sample")
    height, width = input_hw
    if not all(isinstance(v, (int, np.integer)) and v > 0 for v in (height, width)):
        raise ValueError(f"input_hw must be two positive integers, got {input_hw!r}")
    num_landmarks = samples[0].landmarks_px.shape[0]
    for s in samples:
        if s.landmarks_px.shape != (num_landmarks, 2):
            raise ValueError(f"sample {s.image_id}: landmarks of shape {s.landmarks_px.shape}, "
                             f"expected ({num_landmarks}, 2) like the first sample")
    return num_landmarks


def _write_images(samples: Sequence[Sample], path: Path, input_hw: tuple[int, int], progress: bool) -> None:
    """Decode each sample's image, resize it to ``input_hw`` and store all of them in one (N, H, W) uint8 .npy,
    written in place through a memory map so that no more than one image is held in memory."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(samples), *input_hw))
    _reserve(path)
    for i, s in enumerate(tqdm(samples, desc="prepare", unit="img", disable=not progress)):
        image = read_grayscale(s.image_path)  # (H_s, W_s)
        if image.shape[::-1] != tuple(s.stored_wh):
            raise DataError(s.image_path, f"decoded size {image.shape[1]}x{image.shape[0]} differs from "
                                          f"the expected {s.stored_wh[0]}x{s.stored_wh[1]}")
        images[i] = resize_grayscale(image, input_hw)
    images.flush()
    del images


def _reserve(path: Path) -> None:
    """Allocate the disk blocks of a freshly created (sparse) memory-mapped file now: on a full disk a write
    through the map would kill the process with SIGBUS ("Bus error") instead of raising an error."""
    if not hasattr(os, "posix_fallocate"):  # not on every system: the writes then find a full disk themselves
        return
    try:
        with path.open("r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, path.stat().st_size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve blocks
            return
        raise WriteError(path, f"cannot write the prepared images ({path.stat().st_size} bytes): {exc}") from exc


@contextlib.contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` to fill: when the block ends normally it replaces ``out_dir``
    (:func:`replace_folder`), else it goes, so an interrupted writer leaves nothing half-written. Leftovers of a
    writer killed outright are removed first."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp (a folder beside it) with renames only (a folder cannot be os.replace'd over a
    non-empty one), so no reader ever sees a half-written folder."""
    old = out_dir.parent / f".{out_dir.name}.tmp-old-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_cache(cache_dir: str | Path) -> Cache:
    """Open a cache folder written by :func:`build_cache`; images stay memory-mapped.

    Raises:
        DataError: naming the folder, when a file is missing or the files disagree on shapes.
    """
    cache_dir = Path(cache_dir)
    missing = [name for name in _FILES if not (cache_dir / name).is_file()]
    if missing:
        raise DataError(cache_dir, f"not a complete cache folder: missing {', '.join(missing)}")
    try:
        meta = json.loads((cache_dir / "meta.json").read_text())
        images = np.load(cache_dir / "images.npy", mmap_mode="r")  # (N, H, W)
        landmarks = np.load(cache_dir / "landmarks.npy")  # (N, K, 2)
    except (OSError, ValueError) as err:
        raise DataError(cache_dir, f"unreadable cache: {type(err).__name__}: {err}") from err
    return cache_from_arrays(meta, images, landmarks, cache_dir)


def cache_from_arrays(meta: dict, images: np.ndarray, landmarks: np.ndarray, where: str | Path) -> Cache:
    """A :class:`Cache` from the contents of its three files (a cache folder's, or a carry's:
    :mod:`farnet.data.carry`), checked to agree.

    Args:
        meta: the parsed ``meta.json``.
        images: (N, H, W) uint8.
        landmarks: (N, K, 2) float32 input pixels.
        where: the folder or file they came from, for the messages.

    Raises:
        DataError: naming ``where``, when ``meta`` lacks a key or the arrays disagree with it on shapes.
    """
    try:
        ids = [str(i) for i in meta["ids"]]
        input_hw = (int(meta["input_hw"][0]), int(meta["input_hw"][1]))
        num_landmarks = int(meta["num_landmarks"])
        scales = np.asarray(meta["input_to_original"], dtype=np.float64)  # (N, 2)
        landmarks_original = np.asarray(meta["landmarks_original"], dtype=np.float64)  # (N, K, 2)
        spacing = np.array([np.nan if v is None else float(v) for v in meta["spacing_mm"]])  # (N,)
        original_wh = np.asarray(meta["original_wh"], dtype=np.int64)  # (N, 2)
        source_files = list(meta["source_files"])
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise DataError(where, f"unreadable cache: {type(err).__name__}: {err}") from err
    n = len(ids)
    expected = {
        "images.npy": (images.shape, (n, *input_hw)),
        "landmarks.npy": (landmarks.shape, (n, num_landmarks, 2)),
        "input_to_original": (scales.shape, (n, 2)),
        "landmarks_original": (landmarks_original.shape, (n, num_landmarks, 2)),
        "spacing_mm": (spacing.shape, (n,)),
        "original_wh": (original_wh.shape, (n, 2)),
        "source_files": ((len(source_files),), (n,)),
    }
    wrong = [f"{name} {got} != {want}" for name, (got, want) in expected.items() if tuple(got) != want]
    if images.dtype != np.uint8:
        wrong.append(f"images.npy dtype {images.dtype} != uint8")
    if wrong:
        raise DataError(where, "cache files disagree: " + "; ".join(wrong))
    return Cache(images=images, landmarks=landmarks, ids=ids, input_to_original=scales,
                 landmarks_original=landmarks_original, spacing_mm=spacing, original_wh=original_wh,
                 input_hw=input_hw, source_files=source_files, meta=meta)
