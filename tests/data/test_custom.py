"""The own-dataset reader (farnet.data.custom): the CSV format, seeded splits, and a clear error for every bad row."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from farnet.data.custom import assign_splits, fetch_custom, read_custom
from farnet.core.errors import DataError

W, H = 40, 30


def make_dataset(root, rows, header="image,sella_x,sella_y,nasion_x,nasion_y", images=("a.png", "sub/b.png")):
    for i, name in enumerate(images):  # each image its own grey: two listed images are never one file
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W), 100 + i, np.uint8)).save(root / name)
    (root / "landmarks.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return root


def test_reads_names_points_spacing_and_given_splits(tmp_path):
    make_dataset(tmp_path, ["a.png,1.5,2,39.5,-0.5,0.1,train", "sub/b.png, 3 ,4e0,0,29.5,,test"],
                 header="image,sella_x,sella_y,nasion_x,nasion_y,spacing_mm,split")
    samples, splits, names = read_custom(tmp_path)
    assert names == ["sella", "nasion"]
    assert [s.image_id for s in samples] == ["a.png", "sub/b.png"]
    np.testing.assert_array_equal(samples[0].landmarks_px, [[1.5, 2.0], [39.5, -0.5]])
    np.testing.assert_array_equal(samples[1].landmarks_px, [[3.0, 4.0], [0.0, 29.5]])
    assert samples[0].image_path == tmp_path / "a.png" and samples[1].image_path == tmp_path / "sub" / "b.png"
    assert samples[0].original_wh == samples[0].stored_wh == (W, H) and samples[0].stored_scale_xy == (1.0, 1.0)
    assert (samples[0].spacing_mm, samples[1].spacing_mm) == (0.1, None)
    assert splits == {"train": ["a.png"], "val": [], "test": ["sub/b.png"]}
    assert not samples[0].landmarks_px.flags.writeable


def test_optional_columns_may_come_anywhere_and_quotes_and_bom_are_fine(tmp_path):
    (tmp_path / "x y.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "x y.png")
    (tmp_path / "my.csv").write_text('\ufeffimage,split,p_x,p_y\r\n"x y.png",val,1,2\r\n\r\n', encoding="utf-8")
    samples, splits, names = read_custom(tmp_path, "my.csv")
    assert names == ["p"] and splits["val"] == ["x y.png"]
    np.testing.assert_array_equal(samples[0].landmarks_px, [[1, 2]])


def test_dicom_images_are_read_from_their_header(tmp_path):
    pytest.importorskip("pydicom")
    from model_files import dicom_bytes

    (tmp_path / "scan.dcm").write_bytes(dicom_bytes(np.zeros((H, W), np.uint8)))
    (tmp_path / "landmarks.csv").write_text("image,a_x,a_y\nscan.dcm,39,29\n")
    samples, _, _ = read_custom(tmp_path)
    assert samples[0].original_wh == (W, H)


def test_seeded_split_when_the_csv_has_none(tmp_path):
    ids = [f"{i:03d}.png" for i in range(20)]
    first = assign_splits(ids, seed=0)
    assert first == assign_splits(ids, seed=0)
    assert first != assign_splits(ids, seed=1)
    assert [len(first[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    assert sorted(sum(first.values(), [])) == ids
    shuffled = assign_splits(ids[::-1], seed=0)  # the same split whatever the row order
    assert {k: sorted(v) for k, v in shuffled.items()} == {k: sorted(v) for k, v in first.items()}
    assert assign_splits(["only.png"], seed=0) == {"train": ["only.png"], "val": [], "test": []}
    assert [len(v) for v in assign_splits(["a", "b"], seed=3).values()][0] >= 1
    make_dataset(tmp_path, ["a.png,1,2,3,4", "sub/b.png,1,2,3,4"])
    _, splits, _ = read_custom(tmp_path, split_seed=5)
    assert splits == assign_splits(["a.png", "sub/b.png"], seed=5)
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(ids, fractions=(0.5, 0.5, 0.5))


BAD_ROWS = [
    ("a.png,1,2,3", 2, r"expected 5 fields \(image, 2 x/y pairs\), got 4"),
    ("a.png,1,2,3,4,5", 2, "expected 5 fields"),
    ("a.png,1,two,3,4", 2, r"a\.png: column 3 is not a number: 'two'"),
    ("a.png,1,2,3,1_0", 2, "column 5 is not a number: '1_0'"),
    ("a.png,1,2,٣,4", 2, "column 4 is not a number"),
    ("a.png,nan,2,3,4", 2, r"non-finite coordinate 'nan' in column 2"),
    ("a.png,1,2,-inf,4", 2, "non-finite coordinate '-inf'"),
    ("a.png,1,2,39.6,4", 2, r"landmark 'nasion' \(39\.6, 4\) is outside the 40x30 image"),
    ("a.png,1,-0.51,3,4", 2, r"landmark 'sella' \(1, -0\.51\) is outside"),
    ("missing.png,1,2,3,4", 2, r"image file 'missing\.png' not found"),
    ("/etc/a.png,1,2,3,4", 2, "must be a relative path"),
    ("../a.png,1,2,3,4", 2, "must be a relative path"),
    (",1,2,3,4", 2, "must be a relative path"),
    ("a.png,1,2,3,4\nsub/b.png,1,2,3,4\n./a.png,5,6,7,8", 4, r"duplicate image 'a\.png' \(first on line 2\)"),
    ("a.png,1,2,3,4\n" + "x" * 200000, 3, "malformed CSV: field larger than field limit"),
    ('a.png,"1,2,3,4', 2, "malformed CSV"),
]


@pytest.mark.parametrize("rows, line, message", BAD_ROWS)
def test_every_bad_row_names_the_csv_and_the_line(tmp_path, rows, line, message):
    make_dataset(tmp_path, rows.split("\n"))
    with pytest.raises(DataError, match=rf"landmarks\.csv:{line}: .*{message}") as info:
        read_custom(tmp_path)
    assert info.value.line == line and info.value.path == tmp_path / "landmarks.csv"


@pytest.mark.parametrize("header, message", [
    ("file,a_x,a_y", "the first column must be 'image', got 'file'"),
    ("image,a_x,b_y", r"expected a '<name>_x,<name>_y' column pair, got 'a_x', 'b_y'"),
    ("image,a_x,a_y,b_x", r"got 'b_x', ''"),
    ("image,a_x,a_y,extra", "got 'extra'"),
    ("image,a_x,a_y,a_x,a_y", r"duplicate columns \['a_x', 'a_y'\]"),
    ("image,split", "no landmark columns"),
    ("image,_x,_y", "column pair"),
])
def test_bad_headers(tmp_path, header, message):
    make_dataset(tmp_path, ["a.png,1,2"], header=header)
    with pytest.raises(DataError, match=rf"landmarks\.csv:1: .*{message}"):
        read_custom(tmp_path)


def test_bad_optional_values(tmp_path):
    header = "image,a_x,a_y,spacing_mm,split"
    for row, message in (("a.png,1,2,0,train", r"spacing_mm '0' is not a positive number"),
                         ("a.png,1,2,nan,train", "spacing_mm 'nan' is not a positive number"),
                         ("a.png,1,2,abc,train", "spacing_mm 'abc'"),
                         ("a.png,1,2,0.1,validation", "split 'validation' is not one of train, val, test"),
                         ("a.png,1,2,0.1,", "split '' is not one of")):
        make_dataset(tmp_path, [row], header=header)
        with pytest.raises(DataError, match=rf"landmarks\.csv:2: a\.png: {message}"):
            read_custom(tmp_path)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match=r"landmarks\.csv: landmarks CSV not found"):
        read_custom(tmp_path)
    (tmp_path / "landmarks.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"landmarks\.csv:1: empty file"):
        read_custom(tmp_path)
    (tmp_path / "landmarks.csv").write_text("image,a_x,a_y\n\n")
    with pytest.raises(DataError, match=r"landmarks\.csv:1: no image rows"):
        read_custom(tmp_path)
    (tmp_path / "landmarks.csv").write_bytes(b"image,a_x,a_y\n\xff\xfe,1,2\n")
    with pytest.raises(DataError, match=r"landmarks\.csv: not UTF-8 text"):
        read_custom(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    (tmp_path / "landmarks.csv").write_text("image,a_x,a_y\nbad.png,1,2\n")
    with pytest.raises(DataError, match=r"landmarks\.csv:2: image 'bad\.png': .*bad\.png: cannot read image header"):
        read_custom(tmp_path)


def test_fetch_copies_the_listed_files_and_records_their_hashes(tmp_path):
    source = make_dataset(tmp_path / "mine", ["a.png,1,2,3,4,train", "sub/b.png,1,2,3,4,val", "c.png,1,2,3,4,test"],
                          header="image,sella_x,sella_y,nasion_x,nasion_y,split",
                          images=("a.png", "sub/b.png", "c.png", "unlisted.png"))
    dest = tmp_path / "data" / "raw" / "custom"
    record = fetch_custom(dest, SimpleNamespace(root=str(source), csv="landmarks.csv", split_seed=0))
    assert record["n_images"] == 3
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "FETCHED.json", "a.png", "c.png", "landmarks.csv", "sub/b.png"]
    assert set(json.loads((dest / "FETCHED.json").read_text())["files"]) == {"landmarks.csv", "a.png", "sub/b.png",
                                                                            "c.png"}
    read_custom(dest)
    fetch_custom(dest, SimpleNamespace(root=str(source), csv="landmarks.csv", split_seed=0))  # again: replaces its own copy
    other = tmp_path / "occupied"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="exists and was not written by fetch"):
        fetch_custom(other, SimpleNamespace(root=str(source), csv="landmarks.csv", split_seed=0))
    assert (other / "keep.txt").read_text() == "user data"
    make_dataset(source, ["a.png,1,2,3,99"])  # bad data: refused before anything is copied
    with pytest.raises(DataError, match="outside"):
        fetch_custom(dest, SimpleNamespace(root=str(source), csv="landmarks.csv", split_seed=0))
    assert (dest / "sub" / "b.png").is_file()


@pytest.mark.parametrize("link", ["copy", "symlink"])
def test_one_image_in_two_splits_is_refused_naming_both_rows(tmp_path, link):
    """Train/test leakage: the same bytes listed under two names, one in train, one in test."""
    source = make_dataset(tmp_path / "mine", [], images=("a.png",))
    Image.fromarray(np.arange(H * W, dtype=np.uint32).reshape(H, W).astype(np.uint8)).save(source / "a.png")
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(source / "b.png")
    if link == "copy":
        (source / "c.png").write_bytes((source / "a.png").read_bytes())
    else:
        (source / "c.png").symlink_to(source / "a.png")
    (source / "landmarks.csv").write_text("image,p_x,p_y,split\na.png,1,2,train\nb.png,1,2,val\nc.png,1,2,test\n")
    with pytest.raises(DataError, match=r"landmarks\.csv:4: 'c\.png' \(test\) is the same image as 'a\.png' "
                                        r"\(train, line 2\)"):
        fetch_custom(tmp_path / "raw", SimpleNamespace(root=str(source), csv="landmarks.csv", split_seed=0))
    assert not (tmp_path / "raw").exists()  # refused before anything is copied
    (source / "d.png").write_bytes((source / "b.png").read_bytes())
    (source / "landmarks.csv").write_text("image,p_x,p_y,split\na.png,1,2,train\nb.png,1,2,val\nc.png,1,2,train\n"
                                          "d.png,1,2,test\n")
    with pytest.raises(DataError, match=r"'d\.png' \(test\) is the same image as 'b\.png' \(val, line 3\)"):
        fetch_custom(tmp_path / "raw", SimpleNamespace(root=str(source), csv="landmarks.csv", split_seed=0))
    Image.fromarray(np.full((H, W), 9, np.uint8)).save(source / "d.png")
    assert fetch_custom(tmp_path / "raw", SimpleNamespace(root=str(source), csv="landmarks.csv",
                                                          split_seed=0))["n_images"] == 4  # within one split: allowed


@pytest.mark.parametrize("splits, message", [
    (["train", "train", "test"], r"split 'val' has no images \(3 rows; train 2, val 0, test 1\)"),
    (["val", "val", "test"], r"split 'train' has no images"),
    (None, r"split 'val' and 'test' have no images \(3 rows; train 3, val 0, test 0\)"),  # seeded 80/10/10 of 3
])
def test_a_split_a_run_needs_is_refused_when_empty(tmp_path, splits, message):
    """A run trains on train and is evaluated on val and test: an empty one failed only after the training."""
    names = ("a.png", "b.png", "c.png")
    source = make_dataset(tmp_path / "mine", [], images=names)
    if splits is None:
        rows = "image,p_x,p_y\n" + "".join(f"{n},1,2\n" for n in names)
    else:
        rows = "image,p_x,p_y,split\n" + "".join(f"{n},1,2,{s}\n" for n, s in zip(names, splits))
    (source / "landmarks.csv").write_text(rows)
    with pytest.raises(DataError, match=r"landmarks\.csv: " + message):
        fetch_custom(tmp_path / "raw", SimpleNamespace(root=str(source), csv="landmarks.csv", split_seed=0))
