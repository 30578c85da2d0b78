"""Tests of farnet.data.manifest: the sha256sum-format reader and writer, and the manifests the package ships."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from farnet.data.manifest import MANIFEST_DIR, Manifest, hash_folder, write_manifest
from farnet.core.errors import DataError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MIRRORED = ("isbi2015", "hand_dha", "spine_boostnet")


def test_manifest_round_trip_and_format(tmp_path):
    hashes = {"b/x y.jpg": _sha(b"1"), "a.txt": _sha(b"2")}  # names may hold spaces (the spine images do)
    path = write_manifest(tmp_path / "m.sha256", hashes)
    assert path.read_text() == f"{_sha(b'2')}  a.txt\n{_sha(b'1')}  b/x y.jpg\n"  # sha256sum's format, sorted
    assert Manifest.read(path) == Manifest(path, hashes)
    path.write_bytes(f"{_sha(b'2').upper()} *a.txt\r\n\n".encode())  # binary mode, CRLF, upper case
    assert Manifest.read(path).sha256 == {"a.txt": _sha(b"2")}
    for bad in ("/abs", "C:x", "a/../b", "a//b", "./a", "a\\b", "a\nb"):
        with pytest.raises(ValueError, match="manifest path"):
            write_manifest(tmp_path / "bad.sha256", {bad: _sha(b"")})
    with pytest.raises(ValueError, match="not a lowercase hex sha256"):
        write_manifest(tmp_path / "bad.sha256", {"a": "0" * 63})


@pytest.mark.parametrize("lines,line,message", [
    ([f"{'0' * 64}  a", "oops"], 2, r"expected '<sha256>  <relative path>', got 'oops'"),
    ([f"{'0' * 63}  a"], 1, "expected '<sha256>"),
    ([f"{'0' * 64}  a", f"{'1' * 64}  a"], 2, r"'a' is listed twice"),
    ([f"{'0' * 64}  ../a"], 1, r"path '\.\./a' must not have empty, '\.' or '\.\.' components"),
    ([f"{'0' * 64}  /etc/passwd"], 1, r"path '/etc/passwd' must be a relative path"),
])
def test_manifest_read_names_the_bad_line(tmp_path, lines, line, message):
    path = tmp_path / "m.sha256"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"m\.sha256:{line}: {message}") as info:
        Manifest.read(path)
    assert info.value.line == line
    with pytest.raises(DataError, match=r"nothing\.sha256: manifest not found"):
        Manifest.read(tmp_path / "nothing.sha256")


def test_every_mirrored_dataset_has_a_committed_manifest_shipped_with_the_package():
    from farnet.data.registry import get_dataset

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    package_data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    for name in MIRRORED:
        get_dataset(name)  # a dataset the project knows
        manifest = Manifest.committed(name)
        assert manifest.path == MANIFEST_DIR / f"{name}.sha256"
        assert any(manifest.path.match(f"farnet/{glob}") for glob in package_data["farnet"])
    annotations = {"isbi2015": ["MANIFEST.json", "AnnotationsByMD/400_senior/001.txt",
                                "AnnotationsByMD/400_junior/400.txt"],
                   "hand_dha": ["setup/all.csv", "images.json"] + [f"setup/cv/set{f}/{s}.txt" for f in (1, 2, 3)
                                                                   for s in ("train", "test")],
                   "spine_boostnet": [f"labels/{d}/{t}.csv" for d in ("training", "test")
                                      for t in ("filenames", "landmarks", "angles")]}
    for name, files in annotations.items():  # annotation and split files are vouched for too
        assert set(files) <= set(Manifest.committed(name).sha256), name
    assert sum(rel.endswith(".jpg") for rel in Manifest.committed("spine_boostnet").sha256) == 609
    assert sum(rel.endswith(".jpg.mat") for rel in Manifest.committed("spine_boostnet").sha256) == 609


@pytest.mark.mirror
@pytest.mark.parametrize("name", MIRRORED)
def test_committed_manifests_match_the_mirror(mirror_root, name):
    if not (mirror_root / name).is_dir():
        pytest.skip(f"no {name}/ under {mirror_root}")
    assert hash_folder(mirror_root / name) == dict(Manifest.committed(name).sha256)


def test_compare_finds_missing_and_unlisted_files_and_links(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a")
    (root / "sub" / "b.txt").write_bytes(b"b")
    manifest = Manifest(tmp_path / "m.sha256", hash_folder(root))
    assert manifest.compare(root) == ([], []) and manifest.sha256 == {"a.txt": _sha(b"a"), "sub/b.txt": _sha(b"b")}
    (root / "sub" / "b.txt").unlink()
    (root / "empty").mkdir()  # a folder is no file
    (root / "linked").symlink_to(root / "sub")  # a link is listed, not followed
    (root / ".hidden").write_bytes(b"")
    assert manifest.compare(root) == (["sub/b.txt"], [".hidden", "linked"])
    with pytest.raises(DataError, match=rf"root/sub/b\.txt: missing: .*m\.sha256 lists it with sha256 {_sha(b'b')}"):
        manifest.check_listing(root)
    (root / "sub" / "b.txt").write_bytes(b"b")
    with pytest.raises(DataError, match=r"root/\.hidden: not listed in .*m\.sha256.*\(2 unlisted file\(s\)\)"):
        manifest.check_listing(root)
    assert manifest.entries(["a.txt"]) == [("a.txt", _sha(b"a"))]
    with pytest.raises(DataError, match=r"m\.sha256: does not list 'c\.txt'"):
        manifest.entries(["c.txt"])
