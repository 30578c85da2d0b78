"""Tests of the fetch stage's data modules: safe archive extraction (farnet.data.archives), the committed manifests,
verified copies (farnet.data.mirror), the mirror fetches (ISBI, hand, spine) and the figshare path (offline, with
canned answers; farnet.data.download)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from farnet.data.archives import safe_extract
from farnet.data.download import fetch_isbi2015, parse_figshare_files
from farnet.data.mirror import copy_verified
from farnet.data.hand import fetch_hand
from farnet.data.isbi import read_isbi2015
from farnet.data.manifest import Manifest, hash_folder, sha256_file, write_manifest
from farnet.data.spine import fetch_spine
from farnet.core.errors import DataError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sha256_file_and_mirror_root(tmp_path, monkeypatch):
    from farnet.stages.fetch import mirror_root

    data = b"x" * (3 << 20) + b"tail"  # several chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == _sha(data)
    monkeypatch.delenv("FARNET_DATA_MIRROR", raising=False)
    assert mirror_root() is None
    monkeypatch.setenv("FARNET_DATA_MIRROR", str(tmp_path))
    assert mirror_root() == tmp_path


# ---- safe_extract -----------------------------------------------------------------------------------

def _tar(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """members: (name, kind, data or link target) with kind 'file' | 'symlink' | 'hardlink'."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    return path


def _zip(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, kind, payload in members:
            info = zipfile.ZipInfo(name)
            if kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, payload)
            else:
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, payload)
    return path


BAD_MEMBERS = [
    ([("../x", "file", b"evil")], r"refusing member '\.\./x': '\.\.' component"),
    ([("/tmp/farnet_abs_test", "file", b"evil")], r"refusing member '/tmp/farnet_abs_test': absolute path"),
    ([("a/../../x", "file", b"evil")], r"'\.\.' component"),
    ([("link", "symlink", "../outside")], r"refusing member 'link': symlink to '\.\./outside' leaves"),
    ([("sub/link", "symlink", "/etc/passwd")], r"symlink to '/etc/passwd' leaves"),
    # a chain of links that each look harmless: here -> '.', then here/here/.. resolves above dest
    ([("here", "symlink", "."), ("up", "symlink", "here/here/../..")], r"member 'up': symlink"),
    ([("out", "symlink", "sub/../.."), ("ok.txt", "file", b"fine")], r"member 'out': symlink"),
]


@pytest.mark.parametrize("make", [_tar, _zip], ids=["tar", "zip"])
@pytest.mark.parametrize("members,message", BAD_MEMBERS)
def test_safe_extract_refuses(tmp_path, make, members, message):
    archive = make(tmp_path / ("bad.tar.gz" if make is _tar else "bad.zip"), members)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=rf"{re.escape(archive.name)}: .*{message}"):
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == []  # refused before anything was written
    assert not (tmp_path / "x").exists() and not Path("/tmp/farnet_abs_test").exists()


def test_safe_extract_refuses_escaping_hardlink(tmp_path):
    archive = _tar(tmp_path / "h.tar.gz", [("a.txt", "file", b"a"), ("h", "hardlink", "../a.txt")])
    with pytest.raises(DataError, match=r"member 'h': hard link to '\.\./a\.txt' leaves"):
        safe_extract(archive, tmp_path / "dest")


@pytest.mark.parametrize("make", [_tar, _zip], ids=["tar", "zip"])
def test_safe_extract_good_archive(tmp_path, make):
    archive = make(tmp_path / ("good.tar.gz" if make is _tar else "good.zip"),
                   [("RawImage/TrainingData/001.txt", "file", b"one"), ("top.txt", "file", b"top"),
                    ("RawImage/alias", "symlink", "TrainingData/001.txt")])
    dest = tmp_path / "dest"
    safe_extract(archive, dest)
    assert (dest / "RawImage" / "TrainingData" / "001.txt").read_bytes() == b"one"
    assert (dest / "top.txt").read_bytes() == b"top"
    alias = dest / "RawImage" / "alias"
    if make is _tar:  # tar makes a real link; zipfile writes the link target as the file's text
        assert alias.is_symlink() and alias.read_bytes() == b"one"
    else:
        assert alias.read_bytes() == b"TrainingData/001.txt"


def _dest_with_links(tmp_path: Path) -> tuple[Path, Path]:
    """dest holding links made before extraction: two leading outside it, one to a folder inside it."""
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    (dest / "real").mkdir(parents=True)
    (dest / "sub").symlink_to("../outside")  # a folder link leading out
    (dest / "f2").symlink_to(outside / "f2")  # a file link leading out (absolute, dangling)
    (dest / "alias").symlink_to("real")  # a link that stays inside
    (dest / "chain").symlink_to("sub")  # inside, to a link leading out
    return dest, outside


@pytest.mark.parametrize("make", [_tar, _zip], ids=["tar", "zip"])
@pytest.mark.parametrize("member,link", [("sub/f.txt", "sub"), ("sub/deep/f.txt", "sub"), ("f2", "f2"),
                                         ("sub", "sub"), ("chain/f.txt", "chain")])
def test_safe_extract_refuses_writing_through_a_link_already_in_dest(tmp_path, make, member, link):
    dest, outside = _dest_with_links(tmp_path)
    archive = make(tmp_path / ("a.tar.gz" if make is _tar else "a.zip"), [("ok.txt", "file", b"fine"),
                                                                       (member, "file", b"evil")])
    with pytest.raises(DataError, match=rf"refusing member '{member}': '{link}' is a link already in "
                                        rf"{re.escape(str(dest))} that leads outside it"):
        safe_extract(archive, dest)
    assert list(outside.iterdir()) == [] and not (dest / "ok.txt").exists()  # refused before writing


@pytest.mark.parametrize("make", [_tar, _zip], ids=["tar", "zip"])
def test_safe_extract_refuses_an_archive_link_chained_to_a_link_in_dest(tmp_path, make):
    dest, outside = _dest_with_links(tmp_path)
    archive = make(tmp_path / ("a.tar.gz" if make is _tar else "a.zip"),
                   [("hop", "symlink", "alias/../sub"), ("hop/f.txt", "file", b"evil")])
    with pytest.raises(DataError, match=r"refusing member 'hop': 'sub' is a link already in"):
        safe_extract(archive, dest)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("make", [_tar, _zip], ids=["tar", "zip"])
def test_safe_extract_follows_links_inside_dest_and_extracts_twice(tmp_path, make):
    dest, outside = _dest_with_links(tmp_path)
    archive = make(tmp_path / ("a.tar.gz" if make is _tar else "a.zip"),
                   [("alias/f.txt", "file", b"one"), ("link", "symlink", "real/f.txt")])
    safe_extract(archive, dest)
    safe_extract(archive, dest)  # again, over its own link (tar made 'link' a real link the first time)
    assert (dest / "real" / "f.txt").read_bytes() == b"one" and list(outside.iterdir()) == []


def test_safe_extract_rar_without_rarfile_and_non_archive(tmp_path, monkeypatch):
    rar = tmp_path / "RawImage.rar"
    rar.write_bytes(b"Rar!\x1a\x07\x01\x00" + b"\x00" * 32)
    monkeypatch.setitem(sys.modules, "rarfile", None)  # import fails even where rarfile is installed
    with pytest.raises(DataError, match=r"RawImage\.rar: RAR archives need the 'rarfile' package.*unrar x"):
        safe_extract(rar, tmp_path / "dest")
    (tmp_path / "plain.bin").write_bytes(b"hello")
    with pytest.raises(DataError, match=r"plain\.bin: not a zip, tar or RAR archive"):
        safe_extract(tmp_path / "plain.bin", tmp_path / "dest")
    with pytest.raises(DataError, match=r"nothing\.zip: archive not found"):
        safe_extract(tmp_path / "nothing.zip", tmp_path / "dest")


# ---- copy_verified and the ISBI mirror fetch ---------------------------------------------------------

def _fake_mirror(root: Path, ids=("001", "151")) -> Path:
    """A tiny mirror with the real layout and a MANIFEST.json of correct hashes."""
    files = []
    for image_id in ids:
        folder = "TrainingData" if int(image_id) <= 150 else "Test1Data"
        entry = {"id": image_id, "split": folder, "path": f"RawImage/{folder}/{image_id}.jpg", "annotations": {}}
        data = f"image {image_id}".encode()
        (root / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        (root / entry["path"]).write_bytes(data)
        entry["sha256"] = _sha(data)
        for annotator in ("400_senior", "400_junior"):
            rel = f"AnnotationsByMD/{annotator}/{image_id}.txt"
            text = f"{annotator} {image_id}\n".encode()
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(text)
            entry["annotations"][annotator] = {"path": rel, "sha256": _sha(text)}
        files.append(entry)
    (root / "MANIFEST.json").write_text(json.dumps({"files": files}))
    return root


def test_copy_verified_copies_skips_and_refuses(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.bin").write_bytes(b"data")
    dest = tmp_path / "dest"
    hashes = copy_verified(src, dest, [("a/f.bin", _sha(b"data")), ("a/f.bin", None)], progress=False)
    assert hashes == {"a/f.bin": _sha(b"data")} and (dest / "a" / "f.bin").read_bytes() == b"data"

    def no_copy(*args, **kwargs):
        raise AssertionError("a file with the right hash must not be copied again")

    monkeypatch.setattr(shutil, "copyfile", no_copy)
    assert copy_verified(src, dest, [("a/f.bin", _sha(b"data"))], progress=False) == hashes
    monkeypatch.undo()

    (dest / "a" / "f.bin").write_bytes(b"stale")
    with pytest.raises(DataError, match=r"src/a/f\.bin: sha256 mismatch for a/f\.bin: manifest says 0+, file has"):
        copy_verified(src, dest, [("a/f.bin", "0" * 64)], progress=False)
    assert sorted(p.name for p in (dest / "a").iterdir()) == ["f.bin"]  # no temp file left behind
    assert (dest / "a" / "f.bin").read_bytes() == b"stale"  # the old file is not replaced by a bad one
    with pytest.raises(DataError, match=r"src/a/gone\.bin: file listed in the manifest is missing"):
        copy_verified(src, dest, [("a/gone.bin", None)], progress=False)
    with pytest.raises(DataError, match=r"refusing path '\.\./f\.bin'"):
        copy_verified(src, dest, [("../f.bin", None)], progress=False)


def _manifest_of(folder: Path, path: Path) -> Path:
    return write_manifest(path, hash_folder(folder))


def test_fetch_from_fake_mirror_and_wrong_hash(tmp_path):
    mirror = _fake_mirror(tmp_path / "mirror")
    manifest = _manifest_of(mirror, tmp_path / "isbi2015.sha256")
    dest = tmp_path / "data"
    (dest / "RawImage" / "TrainingData").mkdir(parents=True)
    (dest / "RawImage" / "TrainingData" / ".001.jpg.999.tmp").write_bytes(b"half")  # an interrupted run
    summary = fetch_isbi2015(dest, mirror, progress=False, manifest=manifest)
    assert summary == {"source": "mirror", "mirror": str(mirror), "n_images": 2, "files": 7}
    fetched = json.loads((dest / "FETCHED.json").read_text())
    assert fetched["sha256"]["RawImage/Test1Data/151.jpg"] == _sha(b"image 151")
    assert (dest / "MANIFEST.json").read_text() == (mirror / "MANIFEST.json").read_text()
    assert not list(dest.rglob("*.tmp"))

    with pytest.raises(ValueError, match=r"image ids not in .*MANIFEST\.json: \['999'\]"):
        fetch_isbi2015(tmp_path / "other", mirror, ids=["999"], progress=False, manifest=manifest)
    with pytest.raises(DataError, match=r"nowhere: mirror folder not found \(check FARNET_DATA_MIRROR\)"):
        fetch_isbi2015(dest, tmp_path / "nowhere", progress=False, manifest=manifest)
    (mirror / "AnnotationsByMD" / "400_junior" / "151.txt").write_text("400_junior 151 edited\n")
    with pytest.raises(DataError, match=r"AnnotationsByMD/400_junior/151\.txt: sha256 mismatch for .*: manifest "
                                        r"says [0-9a-f]{64}, file has"):
        fetch_isbi2015(tmp_path / "other", mirror, progress=False, manifest=manifest)
    (mirror / "AnnotationsByMD" / "400_junior" / "151.txt").write_text("400_junior 151\n")
    (mirror / "MANIFEST.json").write_text("[")
    with pytest.raises(DataError, match=r"mirror/MANIFEST\.json: sha256 mismatch"):  # the mirror cannot vouch
        fetch_isbi2015(tmp_path / "third", mirror, progress=False, manifest=manifest)
    with pytest.raises(DataError, match=r"MANIFEST\.json: malformed manifest"):  # vouched for, but malformed
        fetch_isbi2015(tmp_path / "third", mirror, progress=False,
                       manifest=_manifest_of(mirror, tmp_path / "again.sha256"))


# ---- checked against the committed manifests: the expected sums are the project's, never the mirror's -------

def test_missing_or_unlisted_files_are_errors_naming_them(tmp_path):
    mirror = _fake_mirror(tmp_path / "mirror")
    manifest = _manifest_of(mirror, tmp_path / "isbi2015.sha256")
    (mirror / "RawImage" / "TrainingData" / "002.jpg").write_bytes(b"an image nobody listed")
    with pytest.raises(DataError, match=r"mirror/RawImage/TrainingData/002\.jpg: not listed in .*isbi2015\.sha256"):
        fetch_isbi2015(tmp_path / "dest", mirror, progress=False, manifest=manifest)
    (mirror / "RawImage" / "TrainingData" / "002.jpg").unlink()
    (mirror / "AnnotationsByMD" / "400_senior" / "151.txt").unlink()
    expected = _sha(b"400_senior 151\n")
    with pytest.raises(DataError, match=rf"mirror/AnnotationsByMD/400_senior/151\.txt: missing: .*isbi2015\.sha256 "
                                        rf"lists it with sha256 {expected} \(1 listed file\(s\) missing\)"):
        fetch_isbi2015(tmp_path / "dest", mirror, ids=["001"], progress=False, manifest=manifest)
    assert not (tmp_path / "dest" / "RawImage").exists()  # refused before copying any image


def _spine_mirror(root: Path) -> Path:
    """A tiny spine mirror: one image per split folder, with its .mat and the three tables."""
    for split_dir in ("training", "test"):
        (root / "data" / split_dir).mkdir(parents=True)
        (root / "labels" / split_dir).mkdir(parents=True)
        (root / "data" / split_dir / "a 1.jpg").write_bytes(f"jpg {split_dir}".encode())
        (root / "labels" / split_dir / "a 1.jpg.mat").write_bytes(f"mat {split_dir}".encode())
        for table in ("filenames", "landmarks", "angles"):
            (root / "labels" / split_dir / f"{table}.csv").write_text("a 1.jpg\n" if table == "filenames" else "0\n")
    return root


def test_spine_tables_are_verified(tmp_path):
    mirror = _spine_mirror(tmp_path / "mirror")
    manifest = _manifest_of(mirror, tmp_path / "spine.sha256")
    summary = fetch_spine(tmp_path / "out", mirror, progress=False, manifest=manifest)
    assert summary["n_images_by_split"] == {"training": 1, "test": 1} and summary["files"] == 10
    (mirror / "labels" / "test" / "angles.csv").write_text("1\n")  # an annotation, not an image
    with pytest.raises(DataError, match=r"labels/test/angles\.csv: sha256 mismatch"):
        fetch_spine(tmp_path / "again", mirror, progress=False, manifest=manifest)


def _hand_mirror(root: Path) -> Path:
    """A tiny hand mirror: Payer et al.'s files (two ids) and the project mirror's own files (one PNG)."""
    (root / "images").mkdir(parents=True)
    (root / "setup" / "all.csv").parent.mkdir(parents=True)
    points = ",".join(str(float(v)) for v in range(74))  # 37 (x, y), the wrist points apart
    (root / "setup" / "all.csv").write_text(f"3001,{points}\n3002,{points}\n")
    for fold in (1, 2, 3):
        (root / "setup" / "cv" / f"set{fold}").mkdir(parents=True)
        (root / "setup" / "cv" / f"set{fold}" / "train.txt").write_text("3001\n")
        (root / "setup" / "cv" / f"set{fold}" / "test.txt").write_text("3002\n")
    (root / "images" / "3001.png").write_bytes(b"png 3001")
    (root / "images.json").write_text("{}")
    return root


def test_hand_fetch_verifies_and_reports_what_it_cannot(tmp_path):
    mirror = _hand_mirror(tmp_path / "mirror")
    manifest = _manifest_of(mirror, tmp_path / "hand.sha256")
    summary = fetch_hand(tmp_path / "a", mirror, progress=False, manifest=manifest)
    assert summary["n_images"] == 1 and summary["unverified_images"] == 0 and summary["files"] == 9
    # A full Digital Hand Atlas copy: none of the mirror's own files, the split's images as JPEGs.
    (mirror / "images.json").unlink()
    (mirror / "images" / "3001.png").unlink()
    for image_id in ("3001", "3002"):
        (mirror / "images" / f"{image_id}.jpg").write_bytes(image_id.encode())
    summary = fetch_hand(tmp_path / "b", mirror, progress=False, manifest=manifest)
    assert summary["n_images"] == 2 and summary["unverified_images"] == 2 and "no committed sha256" in summary["note"]
    fetched = json.loads((tmp_path / "b" / "FETCHED.json").read_text())
    assert fetched["unverified"] == ["images/3001.jpg", "images/3002.jpg"]
    assert fetched["sha256"]["images/3002.jpg"] == _sha(b"3002")
    # Anything else unlisted is an error; so is half of the project mirror's own files.
    (mirror / "images" / "9999.jpg").write_bytes(b"not in the split")
    with pytest.raises(DataError, match=r"images/9999\.jpg: not listed in"):
        fetch_hand(tmp_path / "c", mirror, progress=False, manifest=manifest)
    (mirror / "images" / "9999.jpg").unlink()
    (mirror / "images" / "3001.png").write_bytes(b"png 3001")
    with pytest.raises(DataError, match=r"mirror/images\.json: missing: .* lists it with sha256"):
        fetch_hand(tmp_path / "c", mirror, progress=False, manifest=manifest)
    (mirror / "images.json").write_text("{}")
    (mirror / "setup" / "cv" / "set2" / "test.txt").unlink()
    with pytest.raises(DataError, match=r"setup/cv/set2/test\.txt: missing"):
        fetch_hand(tmp_path / "c", mirror, progress=False, manifest=manifest)


def _writable_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    for item in [dest, *dest.rglob("*")]:  # the mirror is read-only; its copy must not be
        item.chmod(0o755 if item.is_dir() else 0o644)
    return dest


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.mirror
def test_a_mirror_cannot_vouch_for_itself(mirror_root, tmp_path):
    """The issue's case: without images.json and with a flipped byte, the hand fetch used to succeed."""
    if not (mirror_root / "hand_dha" / "images.json").is_file():
        pytest.skip(f"no hand_dha/images.json under {mirror_root}")
    mirror = _writable_copy(mirror_root / "hand_dha", tmp_path / "hand_dha")
    committed = Manifest.committed("hand_dha").sha256
    victim = next(rel for rel in sorted(committed) if rel.startswith("images/"))
    (mirror / "images.json").unlink()
    _flip_last_byte(mirror / victim)
    with pytest.raises(DataError, match=r"hand_dha/images\.json: missing: .*hand_dha\.sha256 lists it"):
        fetch_hand(tmp_path / "hand", mirror, progress=False)
    shutil.copyfile(mirror_root / "hand_dha" / "images.json", mirror / "images.json")
    with pytest.raises(DataError, match=rf"{victim}: sha256 mismatch .*manifest says {committed[victim]}"):
        fetch_hand(tmp_path / "hand", mirror, progress=False)
    assert not (tmp_path / "hand" / victim).exists()


@pytest.mark.mirror
def test_a_corrupt_spine_image_is_refused(mirror_root, tmp_path):
    real = mirror_root / "spine_boostnet"
    if not real.is_dir():
        pytest.skip(f"no spine_boostnet/ under {mirror_root}")
    mirror = tmp_path / "spine_boostnet"  # links to the real files, save one corrupted copy
    for rel in Manifest.committed("spine_boostnet").sha256:
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).symlink_to(real / rel)
    victim = sorted(rel for rel in Manifest.committed("spine_boostnet").sha256 if rel.startswith("data/"))[0]
    (mirror / victim).unlink()
    shutil.copyfile(real / victim, mirror / victim)
    _flip_last_byte(mirror / victim)
    with pytest.raises(DataError, match=rf"{re.escape(victim)}: sha256 mismatch"):
        fetch_spine(tmp_path / "out", mirror, progress=False)


@pytest.mark.mirror
def test_fetch_from_real_mirror(mirror_root, tmp_path, monkeypatch):
    mirror = mirror_root / "isbi2015"
    if not (mirror / "MANIFEST.json").is_file():
        pytest.skip(f"no isbi2015/MANIFEST.json under {mirror_root}")
    dest = tmp_path / "isbi2015"
    ids = ["001", "002", "151", "301"]
    summary = fetch_isbi2015(dest, mirror, ids=ids, progress=False)
    assert summary == {"source": "mirror", "mirror": str(mirror), "n_images": 4, "files": 14}
    manifest = {f["id"]: f for f in json.loads((mirror / "MANIFEST.json").read_text())["files"]}
    for image_id in ids:
        entry = manifest[image_id]
        assert sha256_file(dest / entry["path"]) == entry["sha256"]
        for annotation in entry["annotations"].values():
            assert sha256_file(dest / annotation["path"]) == annotation["sha256"]
    assert json.loads((dest / "FETCHED.json").read_text())["n_images"] == 4
    assert not list(dest.rglob("*.tmp"))
    # The fetched copy reads like the mirror.
    (got,) = read_isbi2015(dest, "test2", ids=["301"])
    (want,) = read_isbi2015(mirror, "test2", ids=["301"])
    assert got.stored_wh == want.stored_wh and (got.landmarks_px == want.landmarks_px).all()
    # A re-run copies nothing.
    monkeypatch.setattr(shutil, "copyfile", lambda *a, **k: pytest.fail("re-copied a verified file"))
    fetch_isbi2015(dest, mirror, ids=ids, progress=False)


# ---- figshare (offline: canned answers) --------------------------------------------------------------

def _figshare_answer(archives: dict[str, bytes]) -> list[dict]:
    answer = [{"id": 1, "name": "EvaluationCode.rar", "size": 3, "computed_md5": "0" * 32,
               "download_url": "https://ndownloader.figshare.com/files/1"}]
    for i, (name, data) in enumerate(archives.items(), start=2):
        answer.append({"id": i, "name": name, "size": len(data), "is_link_only": False,
                       "download_url": f"https://ndownloader.figshare.com/files/{i}",
                       "supplied_md5": "", "computed_md5": hashlib.md5(data).hexdigest()})
    return answer


def test_parse_figshare_files():
    answer = _figshare_answer({"RawImage.rar": b"raw", "AnnotationsByMD.rar": b"ann"})
    files = parse_figshare_files(answer)
    assert files == {
        "RawImage.rar": {"url": "https://ndownloader.figshare.com/files/2", "md5": hashlib.md5(b"raw").hexdigest(),
                         "size": 3},
        "AnnotationsByMD.rar": {"url": "https://ndownloader.figshare.com/files/3",
                                "md5": hashlib.md5(b"ann").hexdigest(), "size": 3},
    }
    with pytest.raises(DataError, match=r"figshare API: file 'AnnotationsByMD\.rar' not in the article"):
        parse_figshare_files(answer[:2])
    answer[1]["download_url"] = "http://insecure/x"
    with pytest.raises(DataError, match=r"'RawImage\.rar' has no https download_url"):
        parse_figshare_files(answer)
    with pytest.raises(DataError, match=r"expected a list of file records"):
        parse_figshare_files({"message": "rate limited"})


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_fetch_from_figshare_offline(tmp_path, monkeypatch):
    # Zip bytes stand in for the RAR archives: safe_extract picks the format from the content.
    archives = {"RawImage.rar": _zip_bytes({"RawImage/TrainingData/001.bmp": b"bmp1",
                                            "RawImage/Test1Data/151.bmp": b"bmp151"}),
                "AnnotationsByMD.rar": _zip_bytes({"AnnotationsByMD/400_senior/001.txt": b"1,2\n"})}
    answer = _figshare_answer(archives)
    by_url = {r["download_url"]: archives.get(r["name"], b"") for r in answer}

    def urlopen(url, timeout):
        if url == "https://api.figshare.com/v2/articles/3471833/files":
            return _Response(json.dumps(answer).encode())
        return _Response(by_url[url])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    dest = tmp_path / "isbi"
    summary = fetch_isbi2015(dest, None, progress=False)
    assert summary == {"source": "figshare", "mirror": None, "n_images": 2, "files": 3}
    assert (dest / "RawImage" / "Test1Data" / "151.bmp").read_bytes() == b"bmp151"
    assert not (dest / "RawImage.rar").exists()
    assert json.loads((dest / "FETCHED.json").read_text())["sha256"]["AnnotationsByMD/400_senior/001.txt"] == \
        _sha(b"1,2\n")

    answer[1]["computed_md5"] = "0" * 32
    with pytest.raises(DataError, match=r"files/2: md5 mismatch"):
        fetch_isbi2015(tmp_path / "again", None, progress=False)
    assert not list((tmp_path / "again").glob("*.rar*")) and not list((tmp_path / "again").glob(".*"))


def test_fetch_without_mirror_or_network_says_where_to_get_data(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"cannot download ISBI 2015 from figshare .*figshare\.com/articles/"
                                        r"dataset/3471833.*FARNET_DATA_MIRROR"):
        fetch_isbi2015(tmp_path / "isbi", None, progress=False)
    with pytest.raises(ValueError, match=r"ids filters a mirror fetch only"):
        fetch_isbi2015(tmp_path / "isbi", None, ids=["001"], progress=False)
