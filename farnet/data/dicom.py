"""DICOM images to 8 bits (through pydicom), for :mod:`farnet.data.imageio`.

The modality LUT (Rescale Slope/Intercept) is applied, then the first VOI window of the header (Window
Center/Width with its VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID, DICOM PS3.3 C.11.2.1.2) maps the values to
0..255; without a window, the first item of a VOI LUT Sequence does; without either, the image's own min..max is
stretched, leaving out Pixel Padding Value pixels, which come out black. MONOCHROME1 images are inverted
afterwards, so bone is bright in every image. Spacing comes from Pixel Spacing, else Imager Pixel Spacing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from farnet.core.errors import DataError


def max_pixels() -> int:
    """The largest image read: twice Pillow's ``MAX_IMAGE_PIXELS`` (its decompression-bomb guard), which also
    bounds DICOM headers and 16-bit PNGs decoded outside Pillow."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 2**62


def read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Decode a single-frame DICOM image to 8 bits (modality LUT, VOI window, MONOCHROME1 inverted)."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut

        ds = pydicom.dcmread(path, force=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if rows <= 0 or cols <= 0:
            raise DataError(path, f"DICOM image has zero size {cols}x{rows}")
        if rows * cols * frames > max_pixels():
            raise DataError(path, f"DICOM image of {cols}x{rows}x{frames} pixels exceeds the size limit "
                                  f"({max_pixels()} pixels)")
        if frames != 1:
            raise DataError(path, f"multi-frame DICOM ({frames} frames); give one image per file")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        pixels = ds.pixel_array
        spacing = _dicom_spacing(ds, path)
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            if pixels.ndim != 2:
                raise DataError(path, f"{photometric} pixel array has shape {pixels.shape}, expected (H, W)")
            padding = _padding_mask(pixels, ds)
            values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
            image = _window_to_uint8(values, ds, path, padding)
            if photometric == "MONOCHROME1":  # low values are white: invert so bone is bright as in MONOCHROME2
                image = 255 - image
            image[padding] = 0  # padding is no part of the picture: black, whatever the photometry
        elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT") and pixels.ndim == 3:
            if pixels.dtype != np.uint8 or pixels.shape[-1] != 3:
                raise DataError(path, f"colour DICOM with {pixels.dtype} samples of shape {pixels.shape}: "
                                      "only 8-bit RGB is supported")
            image = np.asarray(Image.fromarray(pixels, "RGB").convert("L"), dtype=np.uint8)  # pydicom gave RGB
        else:
            raise DataError(path, f"DICOM photometric interpretation {photometric!r} is not supported "
                                  "(MONOCHROME1, MONOCHROME2 or RGB)")
    except DataError:
        raise
    except Exception as err:  # pydicom raises many types on corrupt or unsupported files
        raise DataError(path, f"cannot decode DICOM ({type(err).__name__}: {err})") from err
    if image.shape != (rows, cols):
        raise DataError(path, f"DICOM pixel data of shape {image.shape} does not match Rows x Columns "
                              f"{rows}x{cols}")
    return np.ascontiguousarray(image, dtype=np.uint8), spacing


def _dicom_spacing(ds, path: Path) -> tuple[float, float] | None:
    """(x, y) mm per pixel from Pixel Spacing, else Imager Pixel Spacing (both stored as row, column)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        try:
            row_mm, col_mm = (float(v) for v in value)
        except (TypeError, ValueError):
            raise DataError(path, f"DICOM {keyword} {value!r} is not two numbers") from None
        if not all(math.isfinite(v) and v > 0 for v in (row_mm, col_mm)):
            raise DataError(path, f"DICOM {keyword} {value!r} is not two positive numbers")
        return col_mm, row_mm  # (x, y): columns run along x
    return None


def _first(value) -> float:
    """The first of a possibly multi-valued DICOM number."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _padding_mask(pixels: np.ndarray, ds) -> np.ndarray:
    """(H, W) True where the stored value is Pixel Padding Value (up to Pixel Padding Range Limit when given):
    the area outside the exposure, which must not set the grey range of the picture (PS3.3 C.7.5.1.1.2)."""
    pad = ds.get("PixelPaddingValue")
    if pad is None or pad == "":
        return np.zeros(pixels.shape, dtype=bool)
    limit = ds.get("PixelPaddingRangeLimit")
    low, high = sorted((int(pad), int(limit))) if limit not in (None, "") else (int(pad), int(pad))
    return (pixels >= low) & (pixels <= high)


def _voi_lut_to_unit(values: np.ndarray, ds, path: Path) -> np.ndarray:
    """The first item of a VOI LUT Sequence applied to modality values, as 0..1 of its output range."""
    from pydicom.pixels import apply_voi_lut

    descriptor = ds.VOILUTSequence[0].get("LUTDescriptor")
    try:
        bits = int(descriptor[2])
        out = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True)
    except (TypeError, IndexError, ValueError, AttributeError) as err:
        raise DataError(path, f"DICOM VOI LUT Sequence is unusable ({type(err).__name__}: {err})") from err
    if not 1 <= bits <= 16:
        raise DataError(path, f"DICOM VOI LUT Descriptor gives {bits} output bits, not 1..16")
    return np.asarray(out, dtype=np.float64) / (2**bits - 1)


def _window_to_uint8(values: np.ndarray, ds, path: Path, padding: np.ndarray | None = None) -> np.ndarray:
    """Map modality values to 0..255 by the header's first VOI window, else its first VOI LUT, else by the image's
    min..max (padding pixels left out of it)."""
    if not np.all(np.isfinite(values)):
        raise DataError(path, "DICOM pixel values are not finite after the rescale slope/intercept")
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if (center is None or center == "" or width is None or width == "") and ds.get("VOILUTSequence"):
        unit = _voi_lut_to_unit(values, ds, path)
    elif center is not None and width is not None and center != "" and width != "":
        c, w = _first(center), _first(width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if not (math.isfinite(c) and math.isfinite(w)):
            raise DataError(path, f"DICOM window center/width {c}/{w} are not finite")
        if function == "LINEAR":  # PS3.3 C.11.2.1.2.1
            if w < 1:
                raise DataError(path, f"DICOM window width {w} < 1 (LINEAR)")
            unit = (values > c - 0.5).astype(np.float64) if w == 1 else ((values - (c - 0.5)) / (w - 1) + 0.5)
        elif function == "LINEAR_EXACT":  # C.11.2.1.3.2
            if w <= 0:
                raise DataError(path, f"DICOM window width {w} <= 0 (LINEAR_EXACT)")
            unit = (values - c) / w + 0.5
        elif function == "SIGMOID":  # C.11.2.1.3.1
            if w <= 0:
                raise DataError(path, f"DICOM window width {w} <= 0 (SIGMOID)")
            unit = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - c) / w, -700, 700)))
        else:
            raise DataError(path, f"DICOM VOI LUT function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    else:  # no window: stretch the image's own range
        picture = values[~padding] if padding is not None and not padding.all() else values
        low, high = float(picture.min()), float(picture.max())
        unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
