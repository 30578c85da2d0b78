"""The carry: a prepared dataset packed into one file, its round trip (exact when lossless, within the recorded
grey-level difference when lossy) and the errors that name the file."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from farnet.data.cache import load_cache
from farnet.data.carry import load_carry, pack_carry, read_carry_info, unpack_carry
from farnet.data.views import load_split, read_dataset_info
from farnet.core.errors import DataError
from helpers import write_prepared


@pytest.fixture
def prepared(tmp_path):
    return write_prepared(tmp_path)


def _assert_same_cache(carried, original, exact_images: bool = True):
    assert carried.ids == original.ids and carried.input_hw == original.input_hw
    np.testing.assert_array_equal(carried.landmarks, original.landmarks)
    np.testing.assert_array_equal(carried.landmarks_original, original.landmarks_original)
    np.testing.assert_array_equal(carried.input_to_original, original.input_to_original)
    np.testing.assert_array_equal(carried.spacing_mm, original.spacing_mm)
    np.testing.assert_array_equal(carried.original_wh, original.original_wh)
    if exact_images:
        np.testing.assert_array_equal(carried.images, original.images)


def test_a_lossless_carry_round_trips_exactly(prepared, tmp_path):
    made = pack_carry(prepared, tmp_path / "c.zip", codec="png", progress=False)
    assert (made["form"], made["codec"], made["quality"]) == ("lossless", "png", None)
    assert made["mean_abs_diff"] == 0 and made["max_abs_diff"] == 0
    assert made["bytes"] == (tmp_path / "c.zip").stat().st_size
    assert read_carry_info(tmp_path / "c.zip")["dataset"] == "isbi2015"
    _assert_same_cache(load_carry(tmp_path / "c.zip"), load_cache(prepared))

    carry = unpack_carry(tmp_path / "c.zip", tmp_path / "unpacked" / "isbi2015")
    assert carry["form"] == "lossless" and carry["decoded_identical"] is True
    _assert_same_cache(load_cache(tmp_path / "unpacked" / "isbi2015"), load_cache(prepared))
    info = read_dataset_info(tmp_path / "unpacked" / "isbi2015")
    assert info["carry"]["codec"] == "png" and info["splits"] == read_dataset_info(prepared)["splits"]
    view = load_split(tmp_path / "unpacked" / "isbi2015", "test2")
    np.testing.assert_array_equal(view.landmarks, load_split(prepared, "test2").landmarks)


def test_a_lossy_carry_stays_within_its_recorded_difference(prepared, tmp_path):
    made = pack_carry(prepared, tmp_path / "c.zip", codec="jpeg", quality=60, progress=False)
    assert (made["form"], made["codec"], made["quality"]) == ("lossy", "jpeg", 60)
    original, carried = load_cache(prepared), load_carry(tmp_path / "c.zip")
    _assert_same_cache(carried, original, exact_images=False)  # landmarks and geometry stay exact
    diff = np.abs(carried.images.astype(np.int16) - original.images.astype(np.int16))
    assert 0 < made["mean_abs_diff"] < 10
    assert diff.mean() == pytest.approx(made["mean_abs_diff"], abs=1e-12)
    assert diff.max() == made["max_abs_diff"]
    assert unpack_carry(tmp_path / "c.zip", tmp_path / "u" / "isbi2015")["decoded_identical"] is True


def test_auto_tries_lossless_first_and_keeps_within_the_limit(prepared, tmp_path):
    lossless = pack_carry(prepared, tmp_path / "big.zip", codec="auto", progress=False)
    assert lossless["form"] == "lossless" and lossless["attempts"][0] == {
        "codec": "png", "quality": None, "fits": True, "bytes": lossless["image_bytes"], "images_encoded": 8,
        "estimated_bytes": lossless["image_bytes"]}
    limit = lossless["bytes"] - 1  # PNG cannot fit; lossless WebP or JPEG will
    made = pack_carry(prepared, tmp_path / "small.zip", codec="auto", max_bytes=limit, progress=False)
    assert made["attempts"][0]["codec"] == "png" and made["attempts"][0]["fits"] is False
    assert made["bytes"] <= limit and (tmp_path / "small.zip").stat().st_size == made["bytes"]


def test_a_carry_over_the_limit_is_refused_naming_the_file(prepared, tmp_path):
    out = tmp_path / "c.zip"
    expected = rf"{re.escape(str(out))}: the images fit in no codec tried within the limit .*png: \d+"
    with pytest.raises(DataError, match=expected):
        pack_carry(prepared, out, codec="png", max_bytes=10_000, progress=False)
    assert not out.exists()


def test_a_missing_or_broken_carry_is_named(prepared, tmp_path):
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'none.zip'))}: carry not found"):
        load_carry(tmp_path / "none.zip")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(DataError, match=r"text\.zip: not a carry: not a readable zip file"):
        read_carry_info(tmp_path / "text.zip")
    pack_carry(prepared, tmp_path / "c.zip", codec="png", progress=False)
    with zipfile.ZipFile(tmp_path / "c.zip") as full, zipfile.ZipFile(tmp_path / "cut.zip", "w") as cut:
        for item in full.infolist():
            if item.filename != "images/0003.png":
                cut.writestr(item, full.read(item))
    with pytest.raises(DataError, match=r"cut\.zip: not a complete carry: missing member images/0003\.png"):
        load_carry(tmp_path / "cut.zip")
    with zipfile.ZipFile(tmp_path / "c.zip") as full, zipfile.ZipFile(tmp_path / "other.zip", "w") as other:
        for item in full.infolist():
            data = full.read(item)
            if item.filename == "carry.json":
                data = json.dumps({**json.loads(data), "format_version": 99}).encode()
            other.writestr(item, data)
    with pytest.raises(DataError, match=r"other\.zip: member carry\.json: not a farnet-carry version 1"):
        load_carry(tmp_path / "other.zip")
    with pytest.raises(DataError, match=r"cut\.zip: not a complete carry"):
        unpack_carry(tmp_path / "cut.zip", tmp_path / "u" / "isbi2015")
    assert not (tmp_path / "u").exists()  # nothing written, not even its folder
