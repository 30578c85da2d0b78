"""Tests of farnet.data.hand: Payer et al.'s annotations and folds, the wrist-width unit, partial image sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farnet.data.hand import (
    LANDMARK_NAMES,
    NUM_LANDMARKS,
    fetch_hand,
    find_hand_image,
    hand_counts,
    hand_fold_ids,
    read_hand,
    read_hand_annotations,
    wrist_spacing_mm,
)
from farnet.core.errors import DataError


def _points(seed: int = 0, size: tuple[int, int] = (300, 400)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, size[0], NUM_LANDMARKS), rng.integers(0, size[1], NUM_LANDMARKS)], 1).astype(float)


def _row(image_id: str, points: np.ndarray) -> str:
    return ",".join([image_id] + [f"{v:g}" for v in points.ravel()])


def _tiny_dataset(root: Path, rows: dict[str, np.ndarray], folds: dict[tuple[int, str], list[str]],
                  images: dict[str, tuple[int, int]], suffix: str = ".png") -> Path:
    """A dataset folder with all.csv, the given fold files and blank images of the given sizes."""
    (root / "setup").mkdir(parents=True, exist_ok=True)
    (root / "setup" / "all.csv").write_text("".join(_row(i, p) + "\n" for i, p in rows.items()))
    for (fold, split), ids in folds.items():
        path = root / "setup" / "cv" / f"set{fold}" / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in ids))
    (root / "images").mkdir(exist_ok=True)
    for image_id, size in images.items():
        Image.new("L", size, 10).save(root / "images" / f"{image_id}{suffix}")
    return root


@pytest.fixture(scope="module")
def hand_mirror(mirror_root: Path) -> Path:
    root = mirror_root / "hand_dha"
    if not (root / "setup" / "all.csv").is_file():
        pytest.skip(f"no hand_dha/setup/all.csv under the mirror {mirror_root}")
    return root


# ---- unit: wrist spacing -------------------------------------------------------------------------------

def test_constants():
    assert NUM_LANDMARKS == len(LANDMARK_NAMES) == 37
    assert LANDMARK_NAMES[0] == "L1" and LANDMARK_NAMES[-1] == "L37"


def test_wrist_spacing_hand_computed():
    points = np.zeros((37, 2))
    points[1] = (0, 0)
    points[5] = (30, 40)  # wrist width 50 px = 50 mm -> 1 mm/px
    assert wrist_spacing_mm(points) == pytest.approx(1.0)
    points[5] = (0, 100)  # 100 px -> 0.5 mm/px
    assert wrist_spacing_mm(points) == pytest.approx(0.5)


def test_wrist_spacing_rejects_bad_input():
    with pytest.raises(ValueError, match="wrist width undefined"):
        wrist_spacing_mm(np.zeros((37, 2)))
    with pytest.raises(ValueError, match=r"expected \(K, 2\)"):
        wrist_spacing_mm(np.zeros((4, 2)))


# ---- unit: annotation and fold files -------------------------------------------------------------------

def test_read_annotations_round_trip(tmp_path):
    rows = {"3001": _points(1), "3002": _points(2)}
    _tiny_dataset(tmp_path, rows, {}, {})
    got = read_hand_annotations(tmp_path / "setup" / "all.csv")
    assert list(got) == ["3001", "3002"]
    np.testing.assert_array_equal(got["3002"], rows["3002"])
    assert got["3001"].shape == (37, 2) and not got["3001"].flags.writeable


def test_row_with_missing_value_names_file_and_line(tmp_path):
    path = tmp_path / "all.csv"
    bad = _row("3002", _points(2)).split(",")
    bad[7] = ""  # x of landmark 3
    path.write_text(_row("3001", _points(1)) + "\n" + ",".join(bad) + "\n")
    with pytest.raises(DataError, match=r"all\.csv:2: image 3002: missing value\(s\) for landmark\(s\) \[3\]") as err:
        read_hand_annotations(path)
    assert err.value.line == 2 and err.value.path == path


def test_row_with_too_few_values_names_file_and_line(tmp_path):
    path = tmp_path / "all.csv"
    path.write_text(_row("3001", _points(1)) + "\n" + _row("3002", _points(2)[:36]) + "\n")
    with pytest.raises(DataError, match=r"all\.csv:2: expected 75 values .* found 73"):
        read_hand_annotations(path)


@pytest.mark.parametrize("value, message", [("abc", "'abc' is not a number"), ("nan", "non-finite")])
def test_row_with_bad_number(tmp_path, value, message):
    fields = _row("3001", _points(1)).split(",")
    fields[10] = value
    path = tmp_path / "all.csv"
    path.write_text(",".join(fields) + "\n")
    with pytest.raises(DataError, match=message):
        read_hand_annotations(path)


def test_repeated_id_and_coinciding_wrist_points(tmp_path):
    path = tmp_path / "all.csv"
    path.write_text(_row("3001", _points(1)) + "\n" + _row("3001", _points(2)) + "\n")
    with pytest.raises(DataError, match=r"all\.csv:2: image 3001 is listed twice"):
        read_hand_annotations(path)
    points = _points(3)
    points[5] = points[1]
    path.write_text(_row("3003", points) + "\n")
    with pytest.raises(DataError, match="wrist width undefined"):
        read_hand_annotations(path)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        read_hand_annotations(tmp_path / "all.csv")


def test_fold_ids_validation(tmp_path):
    _tiny_dataset(tmp_path, {}, {(1, "train"): ["a", "b"], (2, "test"): ["a", "a"]}, {})
    assert hand_fold_ids(tmp_path, 1, "train") == ["a", "b"]
    with pytest.raises(DataError, match=r"test\.txt:2: image a is listed twice"):
        hand_fold_ids(tmp_path, 2, "test")
    with pytest.raises(DataError, match="fold file not found"):
        hand_fold_ids(tmp_path, 3, "train")
    with pytest.raises(ValueError, match="fold must be one of"):
        hand_fold_ids(tmp_path, 4, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        hand_fold_ids(tmp_path, 1, "val")


# ---- unit: reading a partial image set -----------------------------------------------------------------

def test_read_hand_keeps_only_present_images(tmp_path):
    rows = {str(i): _points(i) for i in range(3001, 3005)}
    _tiny_dataset(tmp_path, rows, {(1, "train"): ["3001", "3002", "3003"], (1, "test"): ["3004"]},
                  {"3001": (300, 400)}, suffix=".png")
    Image.new("L", (300, 400)).save(tmp_path / "images" / "3003.jpg")  # the DHA's own format
    samples = read_hand(tmp_path, 1, "train")
    assert [s.image_id for s in samples] == ["3001", "3003"]
    assert samples[1].image_path.suffix == ".jpg"
    assert samples[0].spacing_mm == pytest.approx(50 / np.hypot(*(rows["3001"][1] - rows["3001"][5])))
    assert samples[0].original_wh == samples[0].stored_wh == (300, 400)
    assert read_hand(tmp_path, 1, "test") == []
    assert hand_counts(tmp_path, 1, "train") == {"listed": 3, "present": 2, "annotated": 4,
                                                 "missing_annotations": []}
    assert hand_counts(tmp_path)["listed"] == 4
    assert find_hand_image(tmp_path, "3002") is None


def test_read_hand_errors(tmp_path):
    rows = {"3001": _points(1)}
    _tiny_dataset(tmp_path, rows, {(1, "train"): ["3001", "9999"]}, {"3001": (300, 400)})
    with pytest.raises(DataError, match=r"train\.txt: 1 listed image\(s\) have no row in setup/all\.csv: \['9999'\]"):
        read_hand(tmp_path, 1, "train")
    (tmp_path / "setup" / "cv" / "set1" / "train.txt").write_text("3001\n")
    Image.new("L", (100, 100)).save(tmp_path / "images" / "3001.png")  # smaller than the landmarks need
    with pytest.raises(DataError, match=r"image 3001: landmark \d+ at .* lies outside its 100x100 image"):
        read_hand(tmp_path, 1, "train")
    (tmp_path / "images.json").write_text(json.dumps({"3001": {"width": 300, "height": 400}}))
    with pytest.raises(DataError, match="image is 100x100 but images.json says 300x400"):
        read_hand(tmp_path, 1, "train")


def test_fetch_without_mirror_says_where_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="Digital Hand Atlas.*FARNET_DATA_MIRROR"):
        fetch_hand(tmp_path, None)


# ---- mirror: the 9 real images -------------------------------------------------------------------------

def _independent_rows(path: Path) -> dict[str, np.ndarray]:
    rows = {}
    for line in path.read_text().splitlines():
        values = line.split(",")
        rows[values[0]] = np.array(values[1:], dtype=float).reshape(-1, 2)
    return rows


@pytest.mark.mirror
def test_mirror_counts_and_folds(hand_mirror):
    assert hand_counts(hand_mirror) == {"listed": 895, "present": 9, "annotated": 910, "missing_annotations": []}
    for fold in (1, 2, 3):
        train, test = hand_fold_ids(hand_mirror, fold, "train"), hand_fold_ids(hand_mirror, fold, "test")
        assert not set(train) & set(test) and len(train) + len(test) == 895
    tests = [set(hand_fold_ids(hand_mirror, f, "test")) for f in (1, 2, 3)]
    assert len(tests[0] | tests[1] | tests[2]) == 895  # each image is tested exactly once


@pytest.mark.mirror
def test_mirror_samples(hand_mirror):
    rows = _independent_rows(hand_mirror / "setup" / "all.csv")
    info = json.loads((hand_mirror / "images.json").read_text())
    found = []
    for fold in (1, 2, 3):
        for split in ("train", "test"):
            samples = read_hand(hand_mirror, fold, split)
            assert len(samples) == hand_counts(hand_mirror, fold, split)["present"]
            for s in samples:
                assert s.landmarks_px.shape == (37, 2)
                np.testing.assert_array_equal(s.landmarks_px, rows[s.image_id])
                p = rows[s.image_id]
                assert s.spacing_mm == pytest.approx(50.0 / np.sqrt(((p[1] - p[5]) ** 2).sum()))
                # Payer et al.'s .mha spacing of the same image agrees with the wrist-width rule
                assert s.spacing_mm == pytest.approx(info[s.image_id]["element_spacing"], rel=1e-3)
                assert s.original_wh == (info[s.image_id]["width"], info[s.image_id]["height"])
            found += [s.image_id for s in samples if split == "test"]
    assert sorted(found) == sorted(info)  # every present image is a test image of exactly one fold


@pytest.mark.mirror
def test_mirror_fetch(hand_mirror, tmp_path):
    summary = fetch_hand(tmp_path / "hand", hand_mirror, progress=False)
    assert summary["images_present"] == 9 and summary["images_listed"] == 895 and summary["n_images"] == 9
    fetched = json.loads((tmp_path / "hand" / "FETCHED.json").read_text())
    assert "setup/all.csv" in fetched["sha256"] and "setup/cv/set2/test.txt" in fetched["sha256"]
    assert len(read_hand(tmp_path / "hand", 1, "test")) == 4


@pytest.mark.mirror
def test_mirror_fetch_detects_a_corrupt_image(hand_mirror, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(hand_mirror, mirror)
    for item in [mirror, *mirror.rglob("*")]:  # the mirror is read-only; its copy must not be
        item.chmod(0o755 if item.is_dir() else 0o644)
    victim = next(iter(json.loads((mirror / "images.json").read_text())))
    path = mirror / "images" / f"{victim}.png"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch_hand(tmp_path / "hand", mirror, progress=False)
