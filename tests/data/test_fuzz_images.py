"""Fuzzing the image readers: hundreds of corrupted images, and 16-bit images at every depth, seeded.

Each case must load to the original pixels or raise a :class:`farnet.core.errors.FarnetError` naming the file, within
its time budget (see ``fuzzing.py``). A truncated image must fail or decode to the original pixels; a valid 16-bit
image must decode as an independent reading of the documented bit-depth policy says.
"""

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farnet.data.imageio import read_grayscale, read_image_size
from fuzzing import SEED, Failures, base_images, flip_bytes, png_with_size, random_bytes

# Pillow and pydicom warn about the corrupt files they are fed; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


def bmp_with_size(data: bytes, width: int, height: int) -> bytes:
    """The BMP with its header's width and height replaced."""
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def dicom_with_size(rows: int, cols: int) -> bytes:
    """A 4x4 DICOM whose Rows and Columns claim ``rows`` x ``cols``."""
    import pydicom

    from model_files import dicom_bytes

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((4, 4), np.uint8))))
    ds.Rows, ds.Columns = rows, cols
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def image_cases(rng):
    """(case name, suffix, bytes, kind) with kind "valid", "truncated" (must fail or equal the original),
    "must_fail" or "any" (may load: byte flips in pixel data cannot be detected by any reader)."""
    images = base_images()
    names = list(images)
    for name, (suffix, data, _) in images.items():
        yield f"{name}/valid", suffix, data, "valid"
        yield f"{name}/empty", suffix, b"", "must_fail"
        for i in range(7):
            cut = int(rng.integers(1, len(data)))
            yield f"{name}/truncated@{cut}", suffix, data[:cut], "truncated"
        for i in range(8):
            yield f"{name}/flips#{i}", suffix, flip_bytes(data, rng), "any"
        yield f"{name}/header_flips", suffix, flip_bytes(data[:64], rng, 3) + data[64:], "any"
        yield f"{name}/random", suffix, random_bytes(rng), "any"
        yield f"{name}/magic+random", suffix, data[:16] + random_bytes(rng), "any"
        other = images[names[int(rng.integers(0, len(names)))]][1]
        yield f"{name}/foreign_header", suffix, other[:40] + data[40:], "any"
        yield f"{name}/doubled", suffix, data + data, "any"
    png = images["png"][1]
    for width, height in [(100_000, 100_000), (2**31 - 1, 1), (12_000, 12_000), (0, 5), (30_000, 3)]:
        yield f"png/huge_{width}x{height}", ".png", png_with_size(png, width, height), "must_fail"
    bmp = images["bmp"][1]
    for width, height in [(100_000, 100_000), (-5, 20), (24, 2**30), (0, 0)]:
        yield f"bmp/huge_{width}x{height}", ".bmp", bmp_with_size(bmp, width, height), "must_fail"
    for rows, cols in [(65_535, 65_535), (3000, 3000), (0, 4)]:
        yield f"dcm/huge_{rows}x{cols}", ".dcm", dicom_with_size(rows, cols), "must_fail"
    yield "png_named_dcm", ".dcm", png, "must_fail"
    yield "text_named_png", ".png", b"P2\nnot really an image\n", "must_fail"
    yield "zeros_named_tif", ".tif", bytes(500), "must_fail"


def test_fuzz_image_readers(tmp_path):
    rng = np.random.default_rng(SEED)
    references = {name: (data, decoded) for name, (_, data, decoded) in base_images().items()}
    failures = Failures()
    count = 0
    for i, (case, suffix, data, kind) in enumerate(image_cases(rng)):
        path = tmp_path / f"{i:04d}{suffix}"
        path.write_bytes(data)
        outcome, value = failures.run(case, read_grayscale, path)
        size_outcome, size = failures.run(case + " (header)", read_image_size, path)
        count += 1
        if outcome == "crash":
            continue
        base = case.split("/")[0]
        original = references.get(base, (None, None))[1]
        if outcome == "error":
            failures.check(case, str(path) in str(value), f"error does not name the file: {value}")
            failures.check(case, kind != "valid", f"valid file refused: {value}")
            continue
        failures.check(case, kind != "must_fail", "loaded a file that must fail")
        ok_array = (isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 2
                    and min(value.shape) > 0)
        failures.check(case, ok_array, f"not a non-empty (H, W) uint8 array: {getattr(value, 'shape', value)}")
        if not ok_array:
            continue
        failures.check(case, size_outcome == "ok" and size == (value.shape[1], value.shape[0]),
                       f"header size {size} != decoded {value.shape}")
        if kind == "valid" and original is not None:
            failures.check(case, np.array_equal(value, original), "valid file decoded to other pixels")
        if kind == "truncated":
            if original is None:  # JPEG: the valid file's own decoding is the reference
                original = read_grayscale(_write(tmp_path / f"ref{suffix}", references[base][0]))
            failures.check(case, np.array_equal(value, original), "truncated file decoded to other pixels")
    failures.report()
    assert count >= 150


def _write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` and return the path."""
    path.write_bytes(data)
    return path


def reference_sixteen_bit(values: np.ndarray, sbit: int | None) -> np.ndarray:
    """Independent reading of the documented 16-bit policy: v · 255 / (2^b − 1) with b the sBIT depth when every
    value fits it, 16 when not, and without sBIT the first of 8, 10, 12, 14, 16 bits that holds the maximum."""
    top = int(values.max())
    if sbit is not None:
        bits = sbit if top <= 2**sbit - 1 else 16
    else:
        bits = 8
        while top > 2**bits - 1:
            bits += 2
    return np.floor(values.astype(np.float64) * 255.0 / (2**bits - 1) + 0.5).astype(np.uint8)


def bit_depth_cases(rng):
    """(case, suffix, 16-bit values, sBIT or None, the 8-bit picture they must decode to or None)."""
    for i in range(60):
        bits = int(rng.integers(1, 17))
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        top = int(rng.integers(0, 2**bits))
        values = rng.integers(0, top + 1, (h, w)).astype(np.uint16)
        values.flat[int(rng.integers(0, values.size))] = top
        sbit = bits if i % 3 == 0 else None
        if i % 6 == 3 and bits < 16:  # as the PNG standard lays sBIT data out: scaled up to 16 bits
            values = (values << (16 - bits)).astype(np.uint16)
            sbit = bits
        suffix = ".png" if sbit is not None or i % 2 else ".tif"
        yield f"random#{i}({bits} bits, sbit {sbit}){suffix}", suffix, values, sbit, None
    for i in range(24):  # the same picture at every depth it may arrive in: one 8-bit image
        picture = rng.integers(0, 256, (int(rng.integers(2, 25)), int(rng.integers(2, 25)))).astype(np.uint8)
        picture.flat[0] = 255
        bits = [8, 10, 12, 14, 16][i % 5] if i % 2 else int(rng.integers(8, 17))
        sbit = None if bits in (8, 10, 12, 14, 16) and i % 4 == 1 else bits
        values = np.rint(picture * ((2**bits - 1) / 255)).astype(np.uint16)
        yield f"picture#{i}({bits} bits, sbit {sbit})", (".png" if sbit else ".tif"), values, sbit, picture


def save_sixteen(path: Path, values: np.ndarray, sbit: int | None) -> Path:
    """Save 16-bit ``values`` (PNG or TIFF by suffix), with an sBIT chunk when ``sbit`` is given."""
    info = None
    if sbit is not None:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(values).save(path, **({"pnginfo": info} if info else {}))
    return path


def test_fuzz_bit_depths(tmp_path):
    rng = np.random.default_rng(SEED + 4)
    failures = Failures()
    cases = list(bit_depth_cases(rng))
    for i, (case, suffix, values, sbit, picture) in enumerate(cases):
        path = save_sixteen(tmp_path / f"{i:03d}{suffix}", values, sbit)
        outcome, decoded = failures.run(case, read_grayscale, path)
        if outcome != "ok":
            failures.check(case, outcome == "crash", f"valid file refused: {decoded}")
            continue
        expected = reference_sixteen_bit(values, sbit)
        failures.check(case, np.array_equal(decoded, expected), f"decoded max {decoded.max()}, expected "
                                                                f"{expected.max()}")
        if picture is not None:
            failures.check(case, np.array_equal(decoded, picture), "the picture's 8-bit version differs")
    failures.report()
    assert len(cases) >= 80


def colour_and_photometry_cases(rng):
    """(case, writer, 16-bit grey values, expected 8-bit image): 16-bit RGB / grey + alpha / RGBA PNGs of a grey
    picture (Pillow alone keeps their high byte) and 16-bit WhiteIsZero TIFFs (Pillow alone does not invert)."""
    for i in range(40):
        bits = [10, 12, 14, 16][i % 4]
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        values = rng.integers(0, 2**bits, (h, w)).astype(np.uint16)
        values.flat[int(rng.integers(0, values.size))] = 2**bits - 1
        expected = reference_sixteen_bit(values, None)
        kind = ("rgb", "grey+alpha", "rgba", "white-is-zero tiff")[i % 4]
        if kind == "white-is-zero tiff":
            yield f"{kind}#{i}({bits} bits)", ".tif", values, 255 - expected
        else:
            yield f"{kind}#{i}({bits} bits)", ".png", values, expected


def save_colour_or_photometry(path: Path, case: str, values: np.ndarray) -> Path:
    import png

    if case.startswith("white-is-zero"):
        Image.fromarray(values).save(path, tiffinfo={262: 0})
        return path
    planes = {"rgb": [values] * 3, "grey+alpha": [values, np.full_like(values, 65535)],
              "rgba": [values] * 3 + [np.full_like(values, 65535)]}[case.split("#")[0]]
    rows = np.stack(planes, axis=2).reshape(values.shape[0], -1)
    with path.open("wb") as fh:
        png.Writer(values.shape[1], values.shape[0], bitdepth=16, greyscale=case.startswith("grey"),
                   alpha=case.split("#")[0] in ("grey+alpha", "rgba")).write(fh, rows.tolist())
    return path


def test_fuzz_sixteen_bit_colour_and_white_is_zero(tmp_path):
    rng = np.random.default_rng(SEED + 5)
    failures = Failures()
    cases = list(colour_and_photometry_cases(rng))
    for i, (case, suffix, values, expected) in enumerate(cases):
        path = save_colour_or_photometry(tmp_path / f"{i:03d}{suffix}", case, values)
        outcome, decoded = failures.run(case, read_grayscale, path)
        if outcome != "ok":
            failures.check(case, False, f"valid file refused: {decoded}")
            continue
        failures.check(case, np.array_equal(decoded, expected), f"decoded max {decoded.max()}, expected "
                                                                f"{expected.max()}")
    failures.report()
    assert len(cases) == 40
