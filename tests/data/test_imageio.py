"""Reading images whose depth or photometry Pillow alone gets wrong (farnet/data/imageio.py)."""

from __future__ import annotations

import numpy as np
import png
import pytest
from PIL import Image

from farnet.core.errors import DataError
from farnet.data.imageio import read_grayscale

TWELVE_BIT = (np.arange(30, dtype=np.uint16).reshape(6, 5) * 141)  # 0 .. 4089: 12-bit data, unscaled


def _write_png(path, rows: np.ndarray, **kind) -> None:
    height, width = rows.shape[:2]
    with path.open("wb") as fh:
        png.Writer(width, height, bitdepth=16, **kind).write(fh, rows.reshape(height, -1).tolist())


@pytest.mark.parametrize("kind, planes", [
    ({"greyscale": False}, lambda g: np.stack([g, g, g], axis=2)),  # 16-bit RGB
    ({"greyscale": True, "alpha": True}, lambda g: np.stack([g, np.full_like(g, 65535)], axis=2)),  # grey + alpha
    ({"greyscale": False, "alpha": True}, lambda g: np.stack([g, g, g, np.full_like(g, 65535)], axis=2)),  # RGBA
])
def test_sixteen_bit_colour_pngs_read_at_full_depth(tmp_path, kind, planes):
    """Pillow keeps each 16-bit colour sample's high byte: 12-bit data came out at most 15 of 255."""
    _write_png(tmp_path / "grey.png", TWELVE_BIT, greyscale=True)
    _write_png(tmp_path / "colour.png", planes(TWELVE_BIT), **kind)
    grey = read_grayscale(tmp_path / "grey.png")
    assert grey.max() == round(4089 * 255 / 4095)  # 12-bit data scaled to 0..255
    np.testing.assert_array_equal(read_grayscale(tmp_path / "colour.png"), grey)


def test_a_sixteen_bit_colour_png_weighs_channels_as_pillow_does(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint16)
    rgb[..., 0] = 4000  # red only: luma 0.299 of it
    _write_png(tmp_path / "red.png", rgb, greyscale=False)
    assert read_grayscale(tmp_path / "red.png")[0, 0] == round(round(4000 * 0.299) * 255 / 4095)


def test_a_corrupt_sixteen_bit_colour_png_is_a_data_error(tmp_path):
    _write_png(tmp_path / "rgb.png", np.stack([TWELVE_BIT] * 3, axis=2), greyscale=False)
    data = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 30])
    with pytest.raises(DataError, match=r"cut\.png: cannot decode 16-bit PNG"):
        read_grayscale(tmp_path / "cut.png")


def test_a_sixteen_bit_white_is_zero_tiff_is_inverted(tmp_path):
    """PhotometricInterpretation WhiteIsZero: low values are white. Pillow inverts 8-bit ones, not 16-bit."""
    Image.fromarray(TWELVE_BIT).save(tmp_path / "white_is_zero.tif", tiffinfo={262: 0})
    Image.fromarray(TWELVE_BIT).save(tmp_path / "black_is_zero.tif")
    assert Image.open(tmp_path / "white_is_zero.tif").tag_v2.get(262) == 0
    black_is_zero = read_grayscale(tmp_path / "black_is_zero.tif")
    np.testing.assert_array_equal(read_grayscale(tmp_path / "white_is_zero.tif"), 255 - black_is_zero)
    assert black_is_zero[0, 0] == 0


def _dicom(tmp_path, stored: np.ndarray, **attributes):
    """A MONOCHROME2 DICOM of 12-bit ``stored`` values with extra header ``attributes``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.PixelData = stored.astype("<u2").tobytes()
    path = tmp_path / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_dicom_voi_lut_sequence_without_a_window_is_applied(tmp_path):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # 4096 entries from 0, 16-bit output
    # an inverting LUT: no stretch of min..max would do it (LUT Data is OW: 16-bit words)
    item.add_new(0x00283006, "OW", np.array([(4095 - v) * 16 for v in range(4096)], dtype="<u2").tobytes())
    stored = np.array([[0, 1600], [3200, 4095]], dtype=np.uint16)
    image = read_grayscale(_dicom(tmp_path, stored, VOILUTSequence=[item]))
    np.testing.assert_array_equal(image, np.rint((4095 - stored) * 16 / 65535 * 255))


def test_dicom_padding_is_black_and_out_of_the_grey_range(tmp_path):
    stored = np.array([[4095, 4095, 4095], [100, 200, 300]], dtype=np.uint16)  # top row: padding at 4095
    image = read_grayscale(_dicom(tmp_path, stored, PixelPaddingValue=4095))
    np.testing.assert_array_equal(image, [[0, 0, 0], [0, 128, 255]])  # 100..300 stretched; padding black


def test_an_exif_rotated_jpeg_is_read_in_its_stored_frame_and_says_so(tmp_path):
    from farnet.data.imageio import exif_orientation_note

    stored = np.zeros((20, 40), np.uint8)
    stored[:, :20] = 200  # bright left half, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer shows it rotated 90° clockwise
    Image.fromarray(stored).save(tmp_path / "turned.jpg", quality=100, exif=exif)
    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=100)
    image = read_grayscale(tmp_path / "turned.jpg")
    assert image.shape == (20, 40) and image[:, :18].min() > 150 and image[:, 22:].max() < 50
    assert exif_orientation_note(tmp_path / "turned.jpg") == (
        "EXIF Orientation 6 (rotated 90° clockwise when displayed) is not applied: coordinates are in the stored frame")
    assert exif_orientation_note(tmp_path / "plain.jpg") is None
