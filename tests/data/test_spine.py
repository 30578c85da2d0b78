"""Tests of farnet.data.spine: the .mat labels, their checks, the seeded 431/50 split and its 5 folds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from farnet.config import DatasetParams
from farnet.data.registry import get_dataset
from farnet.data.spine import (
    CORNERS,
    LANDMARK_NAMES,
    NUM_LANDMARKS,
    fetch_spine,
    read_angles,
    read_fractional_landmarks,
    read_spine,
    read_spine_mat,
    spine_splits,
)
from farnet.core.errors import DataError


@pytest.fixture(scope="module")
def spine_mirror(mirror_root: Path) -> Path:
    root = mirror_root / "spine_boostnet"
    if not (root / "labels" / "training" / "filenames.csv").is_file():
        pytest.skip(f"no spine_boostnet/labels under the mirror {mirror_root}")
    return root


def _spine_points(width: int = 200, height: int = 600) -> np.ndarray:
    """A straight, clean spine: 17 boxes top to bottom, corners TL, TR, BL, BR."""
    boxes = []
    for v in range(17):
        top, bottom = 20 + 33 * v, 45 + 33 * v
        boxes += [(80, top), (120, top), (80, bottom), (120, bottom)]
    return np.array(boxes, dtype=float)


def _tiny_spine(root: Path, names: list[str], size=(200, 600), points: np.ndarray | None = None) -> Path:
    """labels/training/ and data/training/ with blank images and the same clean spine in each .mat."""
    labels, data = root / "labels" / "training", root / "data" / "training"
    labels.mkdir(parents=True)
    data.mkdir(parents=True)
    points = _spine_points(*size) if points is None else points
    (labels / "filenames.csv").write_text("".join(f"{n}\n" for n in names))
    (labels / "angles.csv").write_text("".join("10.5,2.25,0\n" for _ in names))
    frac = np.concatenate([points[:, 0] / size[0], points[:, 1] / size[1]])
    (labels / "landmarks.csv").write_text("".join(",".join(f"{v:.6g}" for v in frac) + "\n" for _ in names))
    for n in names:
        Image.new("L", size).save(data / n)
        scipy.io.savemat(labels / f"{n}.mat", {"p2": points.astype(np.uint16)})
    return root


# ---- constants and splits --------------------------------------------------------------------------------

def test_constants():
    assert NUM_LANDMARKS == len(LANDMARK_NAMES) == 68
    assert CORNERS == ("top_left", "top_right", "bottom_left", "bottom_right")
    assert LANDMARK_NAMES[:2] == ("T1_top_left", "T1_top_right") and LANDMARK_NAMES[-1] == "L5_bottom_right"


def _ids(n: int = 481) -> list[str]:
    return [f"img {i:03d} AP" for i in range(n)]


def test_splits_protocol():
    ids = _ids()
    splits = spine_splits(ids, seed=0)
    assert len(splits["test"]) == 50 and len(splits["trainval"]) == 431
    assert not set(splits["test"]) & set(splits["trainval"])
    assert set(splits["test"]) | set(splits["trainval"]) == set(ids)
    vals = [splits[f"fold{k}_val"] for k in range(1, 6)]
    assert sorted(len(v) for v in vals) == [86, 86, 86, 86, 87]
    assert sorted(sum(vals, [])) == sorted(splits["trainval"])  # disjoint and covering the 431
    for k in range(1, 6):
        train, val = set(splits[f"fold{k}_train"]), set(splits[f"fold{k}_val"])
        assert not train & val and train | val == set(splits["trainval"])
        assert not train & set(splits["test"])


def test_splits_depend_on_seed_only():
    ids = _ids()
    first = spine_splits(ids, seed=3)
    assert spine_splits(list(reversed(ids)), seed=3) == first  # input order does not matter
    other = spine_splits(ids, seed=4)
    assert other["test"] != first["test"] and other["fold1_val"] != first["fold1_val"]


def test_splits_reject_bad_input():
    with pytest.raises(ValueError, match="not unique"):
        spine_splits(["a", "a", "b"], seed=0)
    with pytest.raises(ValueError, match="cannot split 10 ids"):
        spine_splits(_ids(10), seed=0, n_test=8)


# ---- reader and its checks -----------------------------------------------------------------------------

def test_read_tiny_spine(tmp_path):
    names = ["a 1 AP.jpg", "b 2 AP.jpg"]
    _tiny_spine(tmp_path, names)
    samples = read_spine(tmp_path, "training")
    assert [s.image_id for s in samples] == ["a 1 AP", "b 2 AP"]
    s = samples[0]
    assert s.landmarks_px.shape == (68, 2) and s.landmarks_px.dtype == np.float64
    np.testing.assert_array_equal(s.landmarks_px, _spine_points())
    assert s.spacing_mm is None and s.original_wh == s.stored_wh == (200, 600)
    np.testing.assert_allclose(read_fractional_landmarks(tmp_path, "training")["b 2 AP"] * (200, 600),
                               _spine_points(), atol=0.01)
    angles = read_angles(tmp_path, "training")
    np.testing.assert_array_equal(angles["a 1 AP"], [10.5, 2.25, 0])
    assert [s.image_id for s in read_spine(tmp_path, "training", ids=["b 2 AP"])] == ["b 2 AP"]
    with pytest.raises(ValueError, match="ids not in spine split"):
        read_spine(tmp_path, "training", ids=["zzz"])
    with pytest.raises(ValueError, match="split_dir must be one of"):
        read_spine(tmp_path, "val")


def test_missing_mat_and_image(tmp_path):
    _tiny_spine(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "labels" / "training" / "b.jpg.mat").unlink()
    with pytest.raises(DataError, match=r"b\.jpg\.mat: landmark file not found"):
        read_spine(tmp_path, "training")
    (tmp_path / "data" / "training" / "a.jpg").unlink()
    with pytest.raises(DataError, match=r"a\.jpg: image file not found"):
        read_spine(tmp_path, "training")


@pytest.mark.parametrize("content, message", [
    ({"p2": np.zeros((67, 2))}, r"p2 must be \(68, 2\) real numbers, got shape \(67, 2\)"),
    ({"p2": np.zeros((2, 68))}, r"got shape \(2, 68\)"),
    ({"pts": np.zeros((68, 2))}, r"no variable 'p2' \(found \['pts'\]\)"),
])
def test_bad_mat_content(tmp_path, content, message):
    path = tmp_path / "x.jpg.mat"
    scipy.io.savemat(path, content)
    with pytest.raises(DataError, match=message):
        read_spine_mat(path)


def test_nan_and_outside_points(tmp_path):
    points = _spine_points()
    bad = points.copy()
    bad[7, 1] = np.nan
    path = tmp_path / "x.jpg.mat"
    scipy.io.savemat(path, {"p2": bad})
    with pytest.raises(DataError, match=r"x\.jpg\.mat: p2 has a non-finite coordinate at landmark 7"):
        read_spine_mat(path)
    slightly = points.copy()
    slightly[-1] = (120, 620)  # 20 px = 3.3 % of 600 below the image: tolerated
    scipy.io.savemat(path, {"p2": slightly})
    assert read_spine_mat(path, (200, 600))[-1].tolist() == [120, 620]
    far = points.copy()
    far[3] = (-30, 40)  # 15 % of the width left of the image
    scipy.io.savemat(path, {"p2": far})
    with pytest.raises(DataError, match=r"landmark 3 at \[-30.0, 40.0\] lies outside the 200x600 image"):
        read_spine_mat(path, (200, 600))


def test_table_row_count_and_width(tmp_path):
    _tiny_spine(tmp_path, ["a.jpg", "b.jpg"])
    angles = tmp_path / "labels" / "training" / "angles.csv"
    angles.write_text("1,2,3\n4,5\n")
    with pytest.raises(DataError, match=r"angles\.csv:2: expected 3 numbers, got 2"):
        read_angles(tmp_path, "training")
    angles.write_text("1,2,3\n")
    with pytest.raises(DataError, match="1 rows, but filenames.csv lists 2 images"):
        read_angles(tmp_path, "training")


def test_fetch_without_mirror_says_where_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="SpineWeb.*FARNET_DATA_MIRROR"):
        fetch_spine(tmp_path, None)


def test_fetch_tiny_mirror(tmp_path):
    from farnet.data.manifest import hash_folder, write_manifest

    mirror = tmp_path / "mirror"
    _tiny_spine(mirror, ["a 1.jpg"])
    (mirror / "labels" / "test").mkdir()
    (mirror / "data" / "test").mkdir()
    for rel in ("labels/training/", "data/training/"):
        for item in (mirror / rel).iterdir():
            target = mirror / rel.replace("training", "test") / item.name
            target.write_bytes(item.read_bytes())
    manifest = write_manifest(tmp_path / "spine.sha256", hash_folder(mirror))  # the tiny mirror's own sums
    summary = fetch_spine(tmp_path / "out", mirror, progress=False, manifest=manifest)
    assert summary["n_images"] == 2 and summary["n_images_by_split"] == {"training": 1, "test": 1}
    hashes = json.loads((tmp_path / "out" / "FETCHED.json").read_text())["sha256"]
    assert "labels/test/a 1.jpg.mat" in hashes and len(hashes) == summary["files"] == 10
    assert len(read_spine(tmp_path / "out", "test")) == 1
    (mirror / "data" / "test" / "a 1.jpg").unlink()
    with pytest.raises(DataError, match=r"data/test/a 1\.jpg: missing: .*spine\.sha256 lists it"):
        fetch_spine(tmp_path / "again", mirror, progress=False, manifest=manifest)


# ---- mirror ----------------------------------------------------------------------------------------------

@pytest.mark.mirror
def test_mirror_p2_agrees_with_fractional_table(spine_mirror):
    names = [row[0] for row in csv.reader(open(spine_mirror / "labels" / "training" / "filenames.csv"))]
    table = np.loadtxt(spine_mirror / "labels" / "training" / "landmarks.csv", delimiter=",")
    for row in (0, 1, 240, 480):
        mat = scipy.io.loadmat(spine_mirror / "labels" / "training" / f"{names[row]}.mat")["p2"]
        with Image.open(spine_mirror / "data" / "training" / names[row]) as img:
            width, height = img.size
        # landmarks.csv holds the 68 x, then the 68 y, as fractions: p2 is (x, y)
        expected = np.stack([table[row, :68] * width, table[row, 68:] * height], axis=1)
        np.testing.assert_allclose(mat, expected, atol=0.05)
    samples = {s.image_id: s for s in read_spine(spine_mirror, "training", ids=[names[0][:-4]])}
    corners = samples[names[0][:-4]].landmarks_px[:4]  # T1: top-left, top-right, bottom-left, bottom-right
    assert corners[0, 0] < corners[1, 0] and corners[2, 0] < corners[3, 0]
    assert corners[0, 1] < corners[2, 1] and corners[1, 1] < corners[3, 1]


@pytest.mark.mirror
def test_mirror_read_all(spine_mirror):
    training = read_spine(spine_mirror, "training")
    aasce = read_spine(spine_mirror, "test")
    assert len(training) == 481 and len(aasce) == 128
    assert len({s.image_id for s in training + aasce}) == 609
    assert all(s.landmarks_px.shape == (68, 2) for s in training + aasce)
    outside = [(s.image_id, k) for s in training + aasce for k, (x, y) in enumerate(s.landmarks_px)
               if not (-0.5 <= x <= s.original_wh[0] - 0.5 and -0.5 <= y <= s.original_wh[1] - 0.5)]
    assert outside == [("sunhl-1th-25-Jul-2016-49 A AP", 63)]  # the one published point below its image
    angles = read_angles(spine_mirror, "test")
    assert len(angles) == 128 and all(a.shape == (3,) for a in angles.values())
    splits = spine_splits([s.image_id for s in training], seed=0)
    assert len(splits["test"]) == 50 and len(splits["trainval"]) == 431
    _, registry_splits, _ = get_dataset("spine_boostnet").read(spine_mirror, DatasetParams(split_seed=0))
    assert registry_splits["fold1_val"] == splits["fold1_val"] and len(registry_splits["aasce_test"]) == 128
