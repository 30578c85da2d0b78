"""Reading, resizing and coordinate mapping for 8-bit grayscale images.

Every dataset in the project is read through :func:`read_grayscale`, which decodes BMP/PNG/JPEG (anything
Pillow opens) into a ``uint8`` array of shape (H, W) and turns every unreadable file into a
:class:`~farnet.errors.DataError` naming it. Truncated files are never padded: Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False, so a half-written JPEG is an error, not a grey image.

Coordinates are (x, y), 0-based, with pixel centres at integers (DESIGN §2.2). Resizing an image of width
W to width W' maps x' = (x + 0.5)·W'/W − 0.5, which is also how Pillow places its output pixel centres, so
:func:`resize_grayscale` and :func:`map_points` agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from farnet.errors import DataError

__all__ = ["read_grayscale", "resize_grayscale", "map_points"]

# Errors Pillow raises for files it cannot identify or decode (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def read_grayscale(path: str | Path) -> np.ndarray:
    """Decode an image file into 8-bit grayscale.

    Colour images are converted with Pillow's ITU-R 601-2 luma; 16-bit images are scaled to 8 bits by
    dropping the low byte (value >> 8), so the full 16-bit range maps onto the full 8-bit range.

    Args:
        path: image file (BMP, PNG, JPEG, or any other format Pillow reads).

    Returns:
        Array of shape (H, W), dtype uint8.

    Raises:
        DataError: the file is missing, empty, not an image, truncated or corrupt, has zero size, or has a
            pixel format with no defined 8-bit scale (floating point, 32-bit integers beyond 16 bits).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(path, "empty file (0 bytes)")
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except OSError as err:
        raise DataError(path, f"cannot read image file: {err}") from err
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone else flipped Pillow's global switch
        raise DataError(path, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; refusing to decode images "
                              "that may be silently padded")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, inside the try: Image.open only reads the header
            if img.width == 0 or img.height == 0:
                raise DataError(path, f"image has zero size {img.width}x{img.height}")
            return _to_uint8(img, path)
    except DataError:
        raise
    except _DECODE_ERRORS as err:
        raise DataError(path, f"cannot decode image ({type(err).__name__}: {err})") from err


def _to_uint8(img: Image.Image, path: Path) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to a (H, W) uint8 array."""
    if img.mode == "L":
        return np.array(img, dtype=np.uint8)
    if img.mode.startswith("I;16"):
        return (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
    if img.mode == "I":  # 32-bit signed container; 16-bit PNG/TIFF data often arrive this way
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise DataError(path, f"32-bit integer image with values in [{values.min()}, {values.max()}]: "
                                  "no defined 8-bit scale")
        return (values.astype(np.uint16) >> 8).astype(np.uint8)
    if img.mode == "F":
        raise DataError(path, "floating-point image: no defined 8-bit scale")
    return np.array(img.convert("L"), dtype=np.uint8)


def resize_grayscale(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a grayscale image with Pillow's bilinear filter.

    Pillow places output pixel centres at x_out = (x_in + 0.5)·W_out/W_in − 0.5, the project's convention
    (see :func:`map_points`); when shrinking, its filter widens with the scale factor (antialiased).

    Args:
        image: (H, W) uint8.
        size_hw: output (H', W').

    Returns:
        (H', W') uint8.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a (H, W) uint8 image, got shape {image.shape} dtype {image.dtype}")
    height, width = _check_size(size_hw, "size_hw")
    if image.shape == (height, width):
        return image.copy()
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def map_points(points_xy: np.ndarray, src_wh: tuple[float, float], dst_wh: tuple[float, float]) -> np.ndarray:
    """Map (x, y) pixel coordinates from an image of size src_wh to the same image resized to dst_wh.

    x' = (x + 0.5)·W_dst/W_src − 0.5 and likewise for y (pixel centres at integers). The inverse mapping is
    ``map_points(p, dst_wh, src_wh)``.

    Args:
        points_xy: (..., 2) coordinates, last axis (x, y).
        src_wh: (W, H) of the image the points are given in.
        dst_wh: (W, H) of the image to map them into.

    Returns:
        (..., 2) float64 coordinates in the destination image.
    """
    points = np.asarray(points_xy, dtype=np.float64)
    if points.ndim == 0 or points.shape[-1] != 2:
        raise ValueError(f"expected points of shape (..., 2), got {points.shape}")
    src = np.asarray(_check_size(src_wh, "src_wh", integral=False), dtype=np.float64)
    dst = np.asarray(_check_size(dst_wh, "dst_wh", integral=False), dtype=np.float64)
    return (points + 0.5) * (dst / src) - 0.5


def _check_size(size: tuple, name: str, integral: bool = True) -> tuple:
    """Validate a 2-tuple of positive sizes and return it as a tuple."""
    values = tuple(size)
    ok = len(values) == 2 and all(
        (isinstance(v, (int, np.integer)) if integral else isinstance(v, (int, float, np.number)))
        and not isinstance(v, bool) and v > 0 for v in values)
    if not ok:
        raise ValueError(f"{name} must be two positive {'integers' if integral else 'numbers'}, got {size!r}")
    return values
