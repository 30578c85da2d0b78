"""Reading, resizing and coordinate mapping for 8-bit grayscale images.

Every dataset in the project is read through :func:`read_grayscale` (or :func:`read_image_with_spacing`, which
also returns the pixel spacing a DICOM header gives). It decodes BMP, PNG, JPEG, TIFF (8 or 16 bit; anything
Pillow opens) and DICOM (through pydicom) into a ``uint8`` array of shape (H, W), and turns every unreadable
file into a :class:`~farnet.core.errors.DataError` naming it. Truncated files are never padded: Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False, so a half-written JPEG is an error, not a grey image.

Conversion to 8 bits:

- 8-bit grey: as stored. Colour: Pillow's ITU-R 601-2 luma. Palette, bilevel, CMYK: through Pillow's "L".
- 16-bit PNG/TIFF: value · 255 / (2^b − 1), rounded, where b is the number of bits the data use. X-ray
  exports often store 10-, 12- or 14-bit detector values unscaled in a 16-bit container; scaled as 16-bit
  data they would reach the network at a sixteenth of their brightness (a 12-bit maximum of 4095 is 15 of 255).
  b is taken from the container where it says: a PNG ``sBIT`` chunk of b < 16 bits gives b when every value is
  below 2^b (the values are stored unscaled), else 16 (the PNG specification's own layout: the values are
  scaled up to 16 bits). Without ``sBIT`` (TIFF has no such tag), b is the smallest of 8, 10, 12, 14 and 16
  bits that holds the image's maximum, the depths detectors have; so 8-, 12- and 16-bit exports of the same
  picture give the same 8-bit image. (A 16-bit image using less than a quarter of its range is thus brightened;
  its relative intensities are kept.)
- 16-bit colour PNGs (RGB, grey + alpha, RGBA), which Pillow reads as 8 bits keeping each sample's high byte,
  are read at full depth (pypng): alpha dropped, colour to grey by the same luma, then as 16-bit grey.
  A 16-bit TIFF saying PhotometricInterpretation WhiteIsZero is inverted, as Pillow does for 8-bit ones.
- DICOM: the modality LUT (Rescale Slope/Intercept) is applied, then the first VOI window of the header
  (Window Center/Width with its VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID, DICOM PS3.3 C.11.2.1.2)
  maps the values to 0..255; without a window, the first item of a VOI LUT Sequence does (its output range to
  0..255); without either, the image's own min..max is stretched to 0..255, leaving out Pixel Padding Value
  pixels, which come out black. MONOCHROME1 images (white = low values) are inverted afterwards, so bone is
  bright in every image. Spacing comes from
  Pixel Spacing, else Imager Pixel Spacing. Multi-frame and palette-colour DICOM files are refused;
  compressed transfer syntaxes need a pydicom pixel-data plugin (pylibjpeg, gdcm).

Floating-point images, multi-frame files and images over twice Pillow's ``MAX_IMAGE_PIXELS`` (a decompression
bomb guard that also bounds DICOM headers) are refused. Coordinates are (x, y), 0-based, with pixel centres at
integers (docs/design.md §2.2). Resizing an image of width W to width W' maps x' = (x + 0.5)·W'/W − 0.5, which is also
how Pillow places its output pixel centres, so :func:`resize_grayscale` and :func:`map_points` agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from farnet.core.coords import rescale_points
from farnet.core.errors import DataError
from farnet.data.dicom import max_pixels as _max_pixels
from farnet.data.dicom import read_dicom as _read_dicom

__all__ = ["read_grayscale", "read_image_with_spacing", "read_image_size", "resize_grayscale", "map_points",
           "data_bits", "exif_orientation_note", "DICOM_SUFFIXES", "DETECTOR_BITS"]

DICOM_SUFFIXES = (".dcm", ".dicom")


def read_grayscale(path: str | Path) -> np.ndarray:
    """Decode an image file into 8-bit grayscale (see the module text for how each kind is converted).

    Args:
        path: image file (BMP, PNG, JPEG, TIFF, DICOM, or any other format Pillow reads).

    Returns:
        Array of shape (H, W), dtype uint8.

    Raises:
        DataError: the file is missing, empty, not an image, truncated or corrupt, has zero size, or has a
            pixel format with no defined 8-bit scale (floating point, 32-bit integers beyond 16 bits).
    """
    return read_image_with_spacing(path)[0]


def read_image_with_spacing(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Decode an image file into 8-bit grayscale and the pixel spacing its header states.

    Args:
        path: image file; DICOM is recognised by its "DICM" preamble or a ``.dcm``/``.dicom`` suffix.

    Returns:
        (H, W) uint8 image and the spacing (x, y) in mm per pixel from a DICOM Pixel Spacing (or Imager Pixel
        Spacing) header, or None (other formats, or a DICOM file without one).

    Raises:
        DataError: as :func:`read_grayscale`; also a DICOM spacing that is not two positive numbers.
    """
    path = _check_file(Path(path))
    if _is_dicom(path):
        return _read_dicom(path)
    return _read_pillow(path), None


# EXIF Orientation values that turn or mirror the picture (2..8; 1 is "as stored"), in words
EXIF_ORIENTATIONS = {2: "mirrored left-right", 3: "rotated 180°", 4: "mirrored top-bottom",
                     5: "mirrored and rotated 90° clockwise", 6: "rotated 90° clockwise",
                     7: "mirrored and rotated 90° counter-clockwise", 8: "rotated 90° counter-clockwise"}


def exif_orientation_note(path: str | Path) -> str | None:
    """What an image's EXIF Orientation asks a viewer to do, when it asks anything, else None.

    Every image is read in its stored frame (the frame every dataset's annotations use, and the one
    :func:`read_grayscale` returns): a viewer that applies the tag shows the picture turned, so landmark
    coordinates must be read against the stored pixels. Callers say so in their outputs.
    """
    path = Path(path)
    if _is_dicom(path):
        return None
    try:
        with Image.open(path) as img:
            value = img.getexif().get(0x0112)
    except Exception:  # an unreadable header is reported by the reader itself
        return None
    if value not in EXIF_ORIENTATIONS:
        return None
    return (f"EXIF Orientation {value} ({EXIF_ORIENTATIONS[value]} when displayed) is not applied: coordinates "
            "are in the stored frame")


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(W, H) of an image from its header, without decoding the pixels.

    Raises:
        DataError: the file is missing, empty or not an image.
    """
    path = _check_file(Path(path))
    try:
        if _is_dicom(path):
            import pydicom

            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            width, height = int(ds.Columns), int(ds.Rows)
        else:
            with Image.open(path) as img:
                width, height = img.size
    except Exception as err:  # third-party parsers raise many types on corrupt headers
        raise DataError(path, f"cannot read image header ({type(err).__name__}: {err})") from err
    if width <= 0 or height <= 0:
        raise DataError(path, f"image has zero size {width}x{height}")
    return width, height


def _check_file(path: Path) -> Path:
    try:
        if not path.is_file():
            raise DataError(path, "image file not found" if not path.exists() else "not a regular file")
        if path.stat().st_size == 0:
            raise DataError(path, "empty file (0 bytes)")
    except OSError as err:
        raise DataError(path, f"cannot read image file: {err}") from err
    return path


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as err:
        raise DataError(path, f"cannot read image file: {err}") from err
    return head[128:132] == b"DICM"


def _read_pillow(path: Path) -> np.ndarray:
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone else flipped Pillow's global switch
        raise DataError(path, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; refusing to decode images "
                              "that may be silently padded")
    sixteen_bit_colour = _png_sixteen_bit_colour(path)
    if sixteen_bit_colour is not None:
        return _read_png_sixteen_bit_colour(path, sixteen_bit_colour)
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames != 1:
                raise DataError(path, f"multi-frame image ({frames} frames); give one image per file")
            img.load()  # decode now, inside the try: Image.open only reads the header
            if img.width == 0 or img.height == 0:
                raise DataError(path, f"image has zero size {img.width}x{img.height}")
            return _to_uint8(img, path)
    except DataError:
        raise
    except Exception as err:  # Pillow raises many types on corrupt files (OSError, SyntaxError, struct.error, ...)
        raise DataError(path, f"cannot decode image ({type(err).__name__}: {err})") from err


def _to_uint8(img: Image.Image, path: Path) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to a (H, W) uint8 array."""
    if img.mode == "L":
        return np.array(img, dtype=np.uint8)
    if img.mode.startswith("I;16") or img.mode == "I":  # I: a 32-bit container; 16-bit data often arrive this way
        values = np.asarray(img)
        if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise DataError(path, f"32-bit integer image with values in [{values.min()}, {values.max()}]: "
                                  "no defined 8-bit scale")
        image = _sixteen_bit_to_uint8(values.astype(np.uint16), _png_significant_bits(img, path))
        # Pillow inverts an 8-bit WhiteIsZero TIFF itself, but not a 16-bit one
        return 255 - image if _tiff_white_is_zero(img) else image
    if img.mode == "F":
        raise DataError(path, "floating-point image: no defined 8-bit scale")
    return np.array(img.convert("L"), dtype=np.uint8)


DETECTOR_BITS = (8, 10, 12, 14, 16)  # the depths X-ray detectors store, for 16-bit files that do not say
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_PLANES = {2: 3, 4: 2, 6: 4}  # PNG colour types with more than one sample: RGB, grey + alpha, RGBA


def _tiff_white_is_zero(img: Image.Image) -> bool:
    """Whether a TIFF says PhotometricInterpretation WhiteIsZero (tag 262 = 0)."""
    return img.format == "TIFF" and getattr(img, "tag_v2", {}).get(262) == 0


def _png_sixteen_bit_colour(path: Path) -> int | None:
    """The PNG colour type of a 16-bit PNG with colour or alpha samples (which Pillow reads as 8 bits, keeping
    each sample's high byte: 12-bit data would come out nearly black), else None."""
    try:
        with path.open("rb") as fh:
            head = fh.read(26)
    except OSError as err:
        raise DataError(path, f"cannot read image file: {err}") from err
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    bit_depth, colour_type = head[24], head[25]
    return colour_type if bit_depth == 16 and colour_type in _PNG_COLOUR_PLANES else None


def _read_png_sixteen_bit_colour(path: Path, colour_type: int) -> np.ndarray:
    """A 16-bit RGB, grey + alpha or RGBA PNG at its full depth (pypng): alpha dropped, colour to grey by
    Pillow's ITU-R 601-2 luma, then to 8 bits as every 16-bit image (module text)."""
    import png  # pypng: only these files need it

    try:
        width, height, rows, info = png.Reader(filename=str(path)).read()
        if width * height > _max_pixels():
            raise DataError(path, f"image of {width}x{height} pixels exceeds the size limit ({_max_pixels()} pixels)")
        planes = _PNG_COLOUR_PLANES[colour_type]
        values = np.vstack([np.asarray(row, dtype=np.float64) for row in rows]).reshape(height, width, planes)
    except DataError:
        raise
    except Exception as err:  # pypng raises its own FormatError and others on corrupt files
        raise DataError(path, f"cannot decode 16-bit PNG ({type(err).__name__}: {err})") from err
    if colour_type == 4:  # grey + alpha
        grey = values[..., 0]
    else:  # RGB(A): the weights of Pillow's "L" conversion
        grey = values[..., 0] * 299 / 1000 + values[..., 1] * 587 / 1000 + values[..., 2] * 114 / 1000
    significant = info.get("significant_bits") if isinstance(info, dict) else None
    sbit = max(significant) if isinstance(significant, (tuple, list)) and significant else None
    return _sixteen_bit_to_uint8(np.rint(grey).astype(np.uint16), sbit)


def _sixteen_bit_to_uint8(values: np.ndarray, significant_bits: int | None) -> np.ndarray:
    """(H, W) uint16 -> (H, W) uint8 as value · 255 / (2^b − 1), b the bits the data use (module text)."""
    bits = data_bits(int(values.max()), significant_bits)
    table = np.rint(np.arange(2**16) * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)
    return table[values]


def data_bits(maximum: int, significant_bits: int | None = None) -> int:
    """The number of bits 16-bit image data use, from the container's significant bits (PNG ``sBIT``) or, without
    them, the smallest of :data:`DETECTOR_BITS` that holds ``maximum``.

    Args:
        maximum: the image's largest value (0..65535).
        significant_bits: the container's statement, 1..16, or None.

    Returns:
        ``significant_bits`` when ``maximum`` fits it (unscaled data), 16 when it does not (data scaled up to
        16 bits, as the PNG specification lays them out); without a statement, the detector depth.
    """
    if significant_bits is not None:
        return significant_bits if maximum < 2**significant_bits else 16
    return next(bits for bits in DETECTOR_BITS if maximum < 2**bits)


def _png_significant_bits(img: Image.Image, path: Path) -> int | None:
    """The grey channel's significant bits from a PNG's ``sBIT`` chunk (Pillow does not read it), else None."""
    if img.format != "PNG":
        return None
    try:
        with path.open("rb") as fh:
            fh.seek(8)  # the signature
            while True:
                header = fh.read(8)
                if len(header) < 8:
                    return None
                length, kind = int.from_bytes(header[:4], "big"), header[4:]
                if kind == b"sBIT":
                    bits = fh.read(1)
                    if len(bits) != 1 or not 1 <= bits[0] <= 16:
                        raise DataError(path, f"PNG sBIT chunk {bits!r} is not 1..16 significant bits")
                    return bits[0]
                if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                    return None
                fh.seek(length + 4, 1)  # the chunk's data and CRC
    except OSError as err:
        raise DataError(path, f"cannot read image file: {err}") from err


# ---- resizing and coordinates --------------------------------------------------------------------------------

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
    return rescale_points(points, dst / src)


def _check_size(size: tuple, name: str, integral: bool = True) -> tuple:
    """Validate a 2-tuple of positive sizes and return it as a tuple."""
    values = tuple(size)
    ok = len(values) == 2 and all(
        (isinstance(v, (int, np.integer)) if integral else isinstance(v, (int, float, np.number)))
        and not isinstance(v, bool) and v > 0 for v in values)
    if not ok:
        raise ValueError(f"{name} must be two positive {'integers' if integral else 'numbers'}, got {size!r}")
    return values
