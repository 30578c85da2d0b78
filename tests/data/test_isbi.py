"""Tests of farnet.data.isbi: the ISBI 2015 reader, its two layouts and its annotation checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farnet.data.isbi import (
    ISBI_SPLITS,
    LANDMARK_NAMES,
    NUM_LANDMARKS,
    SPACING_MM,
    read_annotation,
    read_isbi2015,
)
from farnet.core.errors import DataError


def _parse_txt(path: Path) -> np.ndarray:
    """Independent reader for the tests: the first 19 'x,y' lines."""
    rows = path.read_text().splitlines()[:19]
    return np.array([[float(v) for v in row.split(",")] for row in rows])


def _write_points(path: Path, points: np.ndarray, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x:g},{y:g}\n" for x, y in points) + extra)
    return path


def _points(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 1935, 19), rng.integers(0, 2400, 19)], axis=1).astype(float)


@pytest.fixture(scope="module")
def isbi_mirror(mirror_root: Path) -> Path:
    root = mirror_root / "isbi2015"
    if not (root / "MANIFEST.json").is_file():
        pytest.skip(f"no isbi2015/MANIFEST.json under the mirror {mirror_root}")
    return root


def _original_layout(root: Path, ids_points: dict[str, tuple[np.ndarray, np.ndarray]],
                     images: dict[str, Image.Image] | None = None) -> Path:
    """A tiny original-layout dataset: RawImage/TrainingData/NNN.bmp at 1935x2400 plus annotations."""
    for image_id, (senior, junior) in ids_points.items():
        image = (images or {}).get(image_id) or Image.new("L", (1935, 2400), 128)
        (root / "RawImage" / "TrainingData").mkdir(parents=True, exist_ok=True)
        image.save(root / "RawImage" / "TrainingData" / f"{image_id}.bmp")
        _write_points(root / "AnnotationsByMD" / "400_senior" / f"{image_id}.txt", senior)
        _write_points(root / "AnnotationsByMD" / "400_junior" / f"{image_id}.txt", junior)
    return root


# ---- constants -------------------------------------------------------------------------------------

def test_constants():
    assert NUM_LANDMARKS == len(LANDMARK_NAMES) == 19
    assert LANDMARK_NAMES[0] == "sella" and LANDMARK_NAMES[-1] == "articulare"
    assert SPACING_MM == 0.1
    ids = [ISBI_SPLITS[s].ids for s in ("train", "test1", "test2")]
    assert [len(i) for i in ids] == [150, 150, 100]
    assert sum(ids, []) == [f"{i:03d}" for i in range(1, 401)]
    assert [ISBI_SPLITS[s].folder for s in ("train", "test1", "test2")] == ["TrainingData", "Test1Data", "Test2Data"]


# ---- read_annotation -------------------------------------------------------------------------------

def test_read_annotation_ignores_trailing_lines_and_accepts_crlf(tmp_path):
    points = _points()
    path = tmp_path / "a.txt"
    path.write_bytes(("".join(f" {x:g} , {y:g}\r\n" for x, y in points) + "1\n2\n").encode())
    got = read_annotation(path)
    assert got.shape == (19, 2) and got.dtype == np.float64
    np.testing.assert_array_equal(got, points)


def test_read_annotation_18_lines_names_file_and_line(tmp_path):
    path = _write_points(tmp_path / "short.txt", _points()[:18])
    with pytest.raises(DataError, match=r"short\.txt:19: expected 19 lines 'x,y', found 18") as err:
        read_annotation(path)
    assert err.value.line == 19 and err.value.path == path


def test_read_annotation_non_numeric_names_line(tmp_path):
    points = _points()
    path = _write_points(tmp_path / "bad.txt", points)
    lines = path.read_text().splitlines()
    lines[4] = "12,abc"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.txt:5: expected 'x,y' \(two numbers\), got '12,abc'"):
        read_annotation(path)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_read_annotation_non_finite(tmp_path, value):
    lines = [f"{x:g},{y:g}" for x, y in _points()]
    lines[7] = f"100,{value}"
    path = tmp_path / "nan.txt"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"nan\.txt:8: non-finite coordinate"):
        read_annotation(path)


def test_read_annotation_outside_image(tmp_path):
    points = _points()
    points[2] = (1935, 10)  # one past the last column centre (1934) and beyond its edge (1934.5)
    path = _write_points(tmp_path / "out.txt", points)
    with pytest.raises(DataError, match=r"out\.txt:3: point \(1935, 10\) outside the 1935x2400 image"):
        read_annotation(path, image_wh=(1935, 2400))
    read_annotation(path)  # no image size given: no bounds check


def test_read_annotation_missing_and_empty_line(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: annotation file not found"):
        read_annotation(tmp_path / "nope.txt")
    lines = [f"{x:g},{y:g}" for x, y in _points()]
    lines[3] = ""
    (tmp_path / "gap.txt").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"gap\.txt:4: .*line 4 is empty"):
        read_annotation(tmp_path / "gap.txt")


# ---- read_isbi2015: argument checks and the original layout (synthetic, no mirror) -------------------

def test_bad_split_annotator_and_ids(tmp_path):
    with pytest.raises(ValueError, match=r"split must be one of .* got 'val'"):
        read_isbi2015(tmp_path, "val")
    with pytest.raises(ValueError, match=r"annotator must be one of .* got 'expert'"):
        read_isbi2015(tmp_path, "train", annotator="expert")
    with pytest.raises(ValueError, match=r"ids \['151'\] are not in split 'train'"):
        read_isbi2015(tmp_path, "train", ids=["001", "151"])


def test_original_layout_synthetic(tmp_path):
    senior, junior = _points(1), _points(2)
    root = _original_layout(tmp_path / "isbi", {"002": (senior, junior), "001": (junior, senior)})
    samples = read_isbi2015(root, "train", ids=["002", "001"])
    assert [s.image_id for s in samples] == ["001", "002"]
    s = samples[1]
    assert s.image_path == root / "RawImage" / "TrainingData" / "002.bmp"
    assert s.original_wh == s.stored_wh == (1935, 2400)
    assert s.stored_scale_xy == (1.0, 1.0)
    assert s.spacing_mm == 0.1
    np.testing.assert_array_equal(s.landmarks_px, (senior + junior) / 2)
    assert not s.landmarks_px.flags.writeable
    np.testing.assert_array_equal(read_isbi2015(root, "train", "junior", ids=["002"])[0].landmarks_px, junior)


def test_missing_image_and_annotation_name_the_file(tmp_path):
    root = _original_layout(tmp_path / "isbi", {"001": (_points(), _points())})
    with pytest.raises(DataError, match=r"RawImage/TrainingData/002\.bmp: image file not found"):
        read_isbi2015(root, "train", ids=["002"])
    with pytest.raises(DataError, match=r"RawImage/TrainingData/002\.bmp"):
        read_isbi2015(root, "train")  # the whole split: the first missing image is named
    (root / "AnnotationsByMD" / "400_junior" / "001.txt").unlink()
    read_isbi2015(root, "train", "senior", ids=["001"])
    with pytest.raises(DataError, match=r"400_junior/001\.txt: annotation file not found"):
        read_isbi2015(root, "train", "mean", ids=["001"])


def test_original_layout_wrong_size(tmp_path):
    root = _original_layout(tmp_path / "isbi", {"001": (_points(), _points())},
                            images={"001": Image.new("L", (968, 1200))})
    with pytest.raises(DataError, match=r"001\.bmp: original-layout image is 968x1200, expected 1935x2400"):
        read_isbi2015(root, "train", ids=["001"])


def test_annotation_outside_image_is_reported_by_reader(tmp_path):
    bad = _points()
    bad[18] = (10, 2400.5)
    root = _original_layout(tmp_path / "isbi", {"001": (_points(), bad)})
    with pytest.raises(DataError, match=r"400_junior/001\.txt:19: point .* outside"):
        read_isbi2015(root, "train", ids=["001"])


# ---- the real mirror --------------------------------------------------------------------------------

@pytest.mark.mirror
def test_mirror_splits(isbi_mirror):
    for split, first, last, n in (("train", "001", "150", 150), ("test1", "151", "300", 150),
                                  ("test2", "301", "400", 100)):
        samples = read_isbi2015(isbi_mirror, split)
        assert len(samples) == n and samples[0].image_id == first and samples[-1].image_id == last
        assert all(s.image_path.suffix == ".jpg" and s.image_path.parent.name == ISBI_SPLITS[split].folder
                   for s in samples)
        lm = np.stack([s.landmarks_px for s in samples])
        assert lm.shape == (n, 19, 2)
        assert (lm >= 0).all() and (lm[..., 0] <= 1934).all() and (lm[..., 1] <= 2399).all()


@pytest.mark.mirror
def test_mirror_image_001_mean_ground_truth(isbi_mirror):
    senior = _parse_txt(isbi_mirror / "AnnotationsByMD" / "400_senior" / "001.txt")
    junior = _parse_txt(isbi_mirror / "AnnotationsByMD" / "400_junior" / "001.txt")
    (s,) = read_isbi2015(isbi_mirror, "train", ids=["001"])
    assert s.image_id == "001"
    assert s.image_path == isbi_mirror / "RawImage" / "TrainingData" / "001.jpg"
    assert s.original_wh == (1935, 2400) and s.stored_wh == (968, 1200)
    assert s.stored_scale_xy == (0.5, 0.5) and s.spacing_mm == 0.1
    np.testing.assert_array_equal(s.landmarks_px, (senior + junior) / 2)
    np.testing.assert_array_equal(senior[0], [835, 996])  # sella of 001, senior doctor
    np.testing.assert_array_equal(read_isbi2015(isbi_mirror, "train", "senior", ids=["001"])[0].landmarks_px,
                                  senior)


@pytest.mark.mirror
def test_original_layout_matches_mirror(isbi_mirror, tmp_path):
    """BMPs upsampled from the mirror, laid out like the official release: same landmarks, scale 1."""
    ids = ["001", "002"]
    pairs, images = {}, {}
    for image_id in ids:
        pairs[image_id] = tuple(_parse_txt(isbi_mirror / "AnnotationsByMD" / folder / f"{image_id}.txt")
                                for folder in ("400_senior", "400_junior"))
        with Image.open(isbi_mirror / "RawImage" / "TrainingData" / f"{image_id}.jpg") as img:
            images[image_id] = img.resize((1935, 2400), Image.Resampling.BILINEAR)
    root = _original_layout(tmp_path / "orig", pairs, images)
    original = read_isbi2015(root, "train", ids=ids)
    mirror = read_isbi2015(isbi_mirror, "train", ids=ids)
    for o, m in zip(original, mirror):
        assert o.image_id == m.image_id
        assert o.stored_scale_xy == (1.0, 1.0) and m.stored_scale_xy == (0.5, 0.5)
        assert o.stored_wh == o.original_wh == m.original_wh == (1935, 2400)
        np.testing.assert_array_equal(o.landmarks_px, m.landmarks_px)


@pytest.mark.mirror
def test_mirror_manifest_size_mismatch(isbi_mirror, tmp_path):
    root = tmp_path / "isbi"
    manifest = json.loads((isbi_mirror / "MANIFEST.json").read_text())
    entry = manifest["files"][0]
    entry["stored_width"] = 967
    (root / "RawImage" / "TrainingData").mkdir(parents=True)
    shutil.copy(isbi_mirror / entry["path"], root / entry["path"])
    for a in ("400_senior", "400_junior"):
        (root / "AnnotationsByMD" / a).mkdir(parents=True)
        shutil.copy(isbi_mirror / entry["annotations"][a]["path"], root / entry["annotations"][a]["path"])
    manifest["files"] = [entry]
    (root / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"001\.jpg: image is 968x1200 but the manifest says 967x1200"):
        read_isbi2015(root, "train", ids=["001"])
    with pytest.raises(DataError, match=r"MANIFEST\.json: image 002 is not listed"):
        read_isbi2015(root, "train", ids=["002"])
