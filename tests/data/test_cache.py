"""Tests of the prepare-stage cache (farnet.data.cache) and the image decoding it relies on
(farnet.data.imageio): reading, resizing, coordinate mapping, round trips and bad files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from farnet.core.coords import rescale_points
from farnet.data.cache import build_cache, load_cache
from farnet.data.imageio import map_points, read_grayscale, resize_grayscale
from farnet.data.isbi import Sample, read_isbi2015
from farnet.core.errors import DataError


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _jpeg_bytes(h: int = 120, w: int = 100) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(h, w)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ---- imageio: read_grayscale ------------------------------------------------------------------------

def test_read_grayscale_modes(tmp_path):
    gray = _noise(7, 5)
    Image.fromarray(gray).save(tmp_path / "g.png")
    got = read_grayscale(tmp_path / "g.png")
    assert got.dtype == np.uint8 and got.shape == (7, 5)
    np.testing.assert_array_equal(got, gray)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "rgb.bmp")
    np.testing.assert_array_equal(read_grayscale(tmp_path / "rgb.bmp"), gray)
    sixteen = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    # 16-bit data using all 16 bits: value * 255 / 65535, rounded (farnet.data.imageio: the bits the data use)
    np.testing.assert_array_equal(read_grayscale(tmp_path / "16.png"), [[0, 1, 1, 255]])


def test_read_grayscale_bad_files(tmp_path, monkeypatch):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(DataError, match=r"missing\.jpg: image file not found"):
        read_grayscale(tmp_path / "missing.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file"):
        read_grayscale(tmp_path / "empty.png")
    data = _jpeg_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"half\.jpg: cannot decode image \(OSError: image file is truncated"):
        read_grayscale(tmp_path / "half.jpg")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match=r"text\.png: cannot decode image"):
        read_grayscale(tmp_path / "text.png")
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(DataError, match=r"float\.tiff: floating-point image"):
        read_grayscale(tmp_path / "float.tiff")
    # Pillow refuses to identify 0x0 files itself; check our own guard with an image it would hand back.
    (tmp_path / "zero.png").write_bytes(b"x")
    monkeypatch.setattr(Image, "open", lambda path: Image.new("L", (0, 3)))
    with pytest.raises(DataError, match=r"zero\.png: image has zero size 0x3"):
        read_grayscale(tmp_path / "zero.png")


@pytest.mark.mirror
def test_read_grayscale_truncated_real_jpeg(mirror_root, tmp_path):
    real = mirror_root / "isbi2015" / "RawImage" / "TrainingData" / "001.jpg"
    if not real.is_file():
        pytest.skip(f"{real} not in the mirror")
    image = read_grayscale(real)
    assert image.shape == (1200, 968) and image.dtype == np.uint8
    data = real.read_bytes()
    (tmp_path / "001.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"001\.jpg: cannot decode image .*truncated"):
        read_grayscale(tmp_path / "001.jpg")


# ---- imageio: resize and map_points -----------------------------------------------------------------

def test_resize_follows_pixel_centre_convention():
    # Output centres 0..3 of a 1x2 -> 1x4 upsampling sit at input x = -0.25, 0.25, 0.75, 1.25 (clamped).
    got = resize_grayscale(np.array([[0, 100]], np.uint8), (1, 4))
    np.testing.assert_array_equal(got, [[0, 25, 75, 100]])
    assert resize_grayscale(_noise(30, 20), (8, 6)).shape == (8, 6)
    np.testing.assert_array_equal(resize_grayscale(np.full((30, 20), 77, np.uint8), (13, 9)), 77)
    with pytest.raises(ValueError, match=r"size_hw must be two positive integers, got \(0, 4\)"):
        resize_grayscale(_noise(3, 3), (0, 4))
    with pytest.raises(ValueError, match=r"expected a \(H, W\) uint8 image"):
        resize_grayscale(np.zeros((3, 3), np.float32), (2, 2))


def test_map_points_hand_computed_and_inverse():
    points = np.array([[[0.0, 0.0], [1934.0, 2399.0]], [[-0.5, -0.5], [10.0, 20.0]]])  # (2, 2, 2)
    got = map_points(points, (1935, 2400), (640, 800))
    np.testing.assert_allclose(got[0, 0], [0.5 * 640 / 1935 - 0.5, 0.5 * 800 / 2400 - 0.5])
    np.testing.assert_allclose(got[1, 0], [-0.5, -0.5])  # the image's corner stays the corner
    np.testing.assert_allclose(got[0, 1], [1934.5 * 640 / 1935 - 0.5, 2399.5 / 3 - 0.5])
    np.testing.assert_allclose(map_points(got, (640, 800), (1935, 2400)), points, atol=1e-9)
    with pytest.raises(ValueError, match=r"expected points of shape \(\.\.\., 2\)"):
        map_points(np.zeros((3, 3)), (1, 1), (2, 2))


# ---- cache ------------------------------------------------------------------------------------------

def _synthetic_samples(tmp_path: Path, n: int = 3) -> list[Sample]:
    """Stored 50x40 (W x H) PNGs, half of a 100x80 original, plus one full-size sample without spacing."""
    samples = []
    rng = np.random.default_rng(1)
    for i in range(n):
        path = tmp_path / "src" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(40, 50, seed=i)).save(path)
        landmarks = rng.uniform(0, 79, (4, 2))
        samples.append(Sample(f"{i:03d}", path, landmarks, (100, 80), (50, 40), 0.1, (0.5, 0.5)))
    path = tmp_path / "src" / "sub" / "full.png"
    path.parent.mkdir()
    Image.fromarray(_noise(40, 50, seed=9)).save(path)
    samples.append(Sample("full", path, rng.uniform(0, 39, (4, 2)), (50, 40), (50, 40), None))
    return samples


def test_cache_build_load_round_trip(tmp_path):
    samples = _synthetic_samples(tmp_path)
    out = build_cache(samples, tmp_path / "cache", (20, 30), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["images.npy", "landmarks.npy", "meta.json"]
    assert not list(tmp_path.glob(".cache.tmp-*"))

    images = np.load(out / "images.npy", mmap_mode="r")
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (4, 20, 30)
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(images[i], resize_grayscale(read_grayscale(s.image_path), (20, 30)))

    cache = load_cache(out)
    assert isinstance(cache.images, np.memmap) and len(cache) == 4 and cache.input_hw == (20, 30)
    assert cache.ids == ["000", "001", "002", "full"]
    assert cache.landmarks.dtype == np.float32 and cache.landmarks.shape == (4, 4, 2)
    # Hand-computed: original -> stored (scale 0.5) -> input (50x40 -> 30x20).
    x, y = samples[0].landmarks_px[:, 0], samples[0].landmarks_px[:, 1]
    expected = np.stack([((x + 0.5) * 0.5) * 30 / 50 - 0.5, ((y + 0.5) * 0.5) * 20 / 40 - 0.5], axis=1)
    np.testing.assert_allclose(cache.landmarks[0], expected, atol=1e-4)
    np.testing.assert_allclose(cache.input_to_original[0], [50 / (0.5 * 30), 40 / (0.5 * 20)])
    np.testing.assert_allclose(cache.input_to_original[3], [50 / 30, 40 / 20])  # scale from the sizes

    originals = np.stack([s.landmarks_px for s in samples])  # (N, K, 2)
    np.testing.assert_array_equal(cache.landmarks_original, originals)  # exact through JSON
    for i in range(len(cache)):
        back = rescale_points(rescale_points(originals[i], 1 / cache.input_to_original[i]), cache.input_to_original[i])
        np.testing.assert_allclose(back, originals[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(rescale_points(cache.landmarks[i], cache.input_to_original[i]), originals[i],
                                   atol=1e-3)

    np.testing.assert_array_equal(cache.spacing_mm[:3], 0.1)
    assert np.isnan(cache.spacing_mm[3])
    np.testing.assert_array_equal(cache.original_wh, [[100, 80]] * 3 + [[50, 40]])
    assert cache.source_files == ["000.png", "001.png", "002.png", "sub/full.png"]
    assert cache.meta["stored_wh"] == [[50, 40]] * 4 and cache.meta["num_landmarks"] == 4


def test_cache_rebuild_replaces_and_failure_leaves_old(tmp_path):
    samples = _synthetic_samples(tmp_path)
    out = tmp_path / "cache"
    build_cache(samples[:2], out, (8, 8), progress=False)
    build_cache(samples, out, (8, 8), progress=False)
    assert len(load_cache(out)) == 4
    broken = samples[:1] + [Sample("gone", tmp_path / "gone.png", samples[0].landmarks_px, (100, 80),
                                   (50, 40), 0.1, (0.5, 0.5))]
    with pytest.raises(DataError, match=r"gone\.png: image file not found"):
        build_cache(broken, out, (8, 8), progress=False)
    assert load_cache(out).ids == ["000", "001", "002", "full"]  # the old cache is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cache_checks_inputs(tmp_path):
    samples = _synthetic_samples(tmp_path)
    with pytest.raises(ValueError, match=r"at least one sample"):
        build_cache([], tmp_path / "c", (8, 8))
    with pytest.raises(ValueError, match=r"input_hw must be two positive integers"):
        build_cache(samples, tmp_path / "c", (8, 0))
    odd = Sample("odd", samples[0].image_path, np.zeros((3, 2)), (100, 80), (50, 40), 0.1)
    with pytest.raises(ValueError, match=r"sample odd: landmarks of shape \(3, 2\), expected \(4, 2\)"):
        build_cache(samples + [odd], tmp_path / "c", (8, 8))
    wrong = Sample("w", samples[0].image_path, samples[0].landmarks_px, (100, 80), (51, 40), 0.1)
    with pytest.raises(DataError, match=r"000\.png: decoded size 50x40 differs from the expected 51x40"):
        build_cache([wrong], tmp_path / "c", (8, 8), progress=False)
    assert not (tmp_path / "c").exists()


def test_load_cache_errors(tmp_path):
    out = build_cache(_synthetic_samples(tmp_path), tmp_path / "cache", (8, 8), progress=False)
    np.save(out / "landmarks.npy", np.zeros((4, 5, 2), np.float32))
    with pytest.raises(DataError, match=r"cache: cache files disagree: landmarks\.npy \(4, 5, 2\) != \(4, 4, 2\)"):
        load_cache(out)
    (out / "images.npy").unlink()
    with pytest.raises(DataError, match=r"cache: not a complete cache folder: missing images\.npy"):
        load_cache(out)
    (out / "meta.json").write_text("{")
    np.save(out / "images.npy", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"cache: unreadable cache"):
        load_cache(out)


@pytest.mark.mirror
def test_cache_on_mirror_image_001(mirror_root, tmp_path):
    root = mirror_root / "isbi2015"
    if not (root / "MANIFEST.json").is_file():
        pytest.skip(f"no isbi2015 under the mirror {mirror_root}")
    samples = read_isbi2015(root, "train", ids=["001", "002"])
    cache = load_cache(build_cache(samples, tmp_path / "cache", (800, 640), progress=False))
    assert cache.images.shape == (2, 800, 640) and cache.images.dtype == np.uint8
    assert 40 < float(cache.images[0].mean()) < 215  # a real radiograph, not a blank
    rows = [[float(v) for v in line.split(",")] for folder in ("400_senior", "400_junior")
            for line in (root / "AnnotationsByMD" / folder / "001.txt").read_text().splitlines()[:19]]
    mean = (np.array(rows[:19]) + np.array(rows[19:])) / 2  # (19, 2) original px
    x, y = mean[:, 0], mean[:, 1]
    expected = np.stack([((x + 0.5) * 0.5) * 640 / 968 - 0.5, ((y + 0.5) * 0.5) * 800 / 1200 - 0.5], axis=1)
    to_input = rescale_points(mean, 1 / cache.input_to_original[0])
    np.testing.assert_allclose(to_input, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cache.landmarks[0], expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(rescale_points(to_input, cache.input_to_original[0]), mean, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(cache.landmarks_original[0], mean)
    np.testing.assert_allclose(cache.input_to_original[0], [968 / 320, 1200 / 400])
    assert cache.meta["source_files"] == ["001.jpg", "002.jpg"]
    assert json.loads((tmp_path / "cache" / "meta.json").read_text())["spacing_mm"] == [0.1, 0.1]


def test_a_full_disk_while_preparing_is_an_error_not_a_bus_error(tmp_path, monkeypatch):
    """The memory-mapped cache was sparse: writing images through it on a full disk killed prepare with SIGBUS."""
    import errno
    import os

    from farnet.core.errors import WriteError

    samples = _synthetic_samples(tmp_path)
    build_cache(samples, tmp_path / "cache", (8, 8), progress=False)
    allocated = []
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, size: allocated.append(size) or real(fd, offset, size))
    build_cache(samples, tmp_path / "cache", (8, 8), progress=False)
    assert allocated == [4 * 8 * 8 + 128]  # every image's bytes and the .npy header, reserved before any write

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(WriteError, match=r"images\.npy: cannot write the prepared images \(384 bytes\): .*No space"):
        build_cache(samples, tmp_path / "cache", (8, 8), progress=False)
    assert len(load_cache(tmp_path / "cache")) == 4  # the old cache is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
