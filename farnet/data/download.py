"""The fetch stage: get a dataset onto disk, verified, from a local mirror or its official source.

docs/design.md §2.1: each dataset is (1) copied from a local mirror when ``FARNET_DATA_MIRROR`` is set, verifying
every file against the sha256 sums the project commits for it, else (2) downloaded from its official source
where that can be scripted (ISBI 2015: figshare article 3471833), else (3) the stage stops and says where to
get the data. Every file is written under a temporary name and renamed into place, so an interrupted fetch
never leaves a half file; files already present with the right hash are skipped, so re-runs are fast.

The expected sums live in the package, never in the mirror: ``farnet/data/manifests/<dataset>.sha256`` lists
every file of the dataset's mirror (:mod:`farnet.data.manifest`). A file that fails its sum, is missing from
the mirror or is in the mirror but not in the manifest is an error naming it.

Archives are unpacked by :func:`safe_extract`, which refuses absolute member names, ``..`` components and
links that resolve outside the target folder (the archive's own links and links already in the folder)
before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path, PureWindowsPath

from tqdm import tqdm

from farnet.data.manifest import Manifest, sha256_file
from farnet.core.errors import DataError
from farnet.core.fileio import write_json

__all__ = [
    "MIRROR_ENV",
    "FIGSHARE_ARTICLE_ISBI2015",
    "sha256_file",
    "safe_extract",
    "copy_verified",
    "parse_figshare_files",
    "fetch_isbi2015",
]

MIRROR_ENV = "FARNET_DATA_MIRROR"
FIGSHARE_ARTICLE_ISBI2015 = 3471833
FIGSHARE_API = "https://api.figshare.com/v2/articles/{article}/files"
ISBI2015_ARCHIVES = ("RawImage.rar", "AnnotationsByMD.rar")
_CHUNK = 1 << 20  # 1 MiB, for downloads
_MAX_LINK_HOPS = 40  # like the kernel's limit on nested symlinks


# --------------------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------------------

def _split_member(name: str) -> list[str]:
    """Components of an archive member name, splitting on both separators."""
    return [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]


def _is_absolute(name: str) -> bool:
    win = PureWindowsPath(name)
    return name.startswith(("/", "\\")) or bool(win.drive) or bool(win.root)


class _ExistingLinkLeaves(Exception):
    """A path goes through a link that was already in the target folder and leads outside it."""

    def __init__(self, link: str, target: str):
        self.link, self.target = link, target
        super().__init__(link)


def _existing_link(dest: Path, key: str) -> list[str] | None:
    """Where a link already on disk at dest/key leads, as components relative to dest; None if no link there.

    Raises:
        _ExistingLinkLeaves: the link resolves (through any chain of links on disk) outside dest.
    """
    path = dest / key
    if not path.is_symlink():
        return None
    real, root = os.path.realpath(path), os.path.realpath(dest)
    if os.path.commonpath([real, root]) != root:
        raise _ExistingLinkLeaves(key, os.readlink(path))
    return [part for part in Path(os.path.relpath(real, root)).parts if part != "."]


def _resolve_inside(parts: list[str], links: dict[str, str], dest: Path | None = None) -> list[str] | None:
    """Resolve a path (components relative to dest) through the archive's own symlinks and those on disk.

    Returns the resolved components, or None when the path leaves dest (``..`` above it, an absolute link
    target, or a link loop). Links are the archive's symlink members, name -> target, targets relative to
    the link's folder; resolving through them catches chains that each look harmless on their own. With
    dest, links already in the folder are followed too (tar's ``data`` filter refuses writing through them,
    zipfile and rarfile do not).

    Raises:
        _ExistingLinkLeaves: the path goes through a link already in dest that leads outside it.
    """
    resolved: list[str] = []
    pending = list(parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        resolved.append(part)
        key = "/".join(resolved)
        on_disk = _existing_link(dest, key) if dest is not None else None
        target = links.get(key)
        if target is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS or _is_absolute(target):
                return None
            resolved.pop()  # the target is relative to the link's folder
            pending = target.replace("\\", "/").split("/") + pending
        elif on_disk is not None:
            resolved = on_disk  # where the link on disk really leads, already resolved
    return resolved


def _check_members(archive: Path, members: list[tuple[str, str, str | None]], dest: Path | None = None) -> None:
    """Refuse unsafe members before anything is written.

    Args:
        archive: the archive, for error messages.
        members: (name, kind, link_target) with kind one of "file", "dir", "symlink", "hardlink".
        dest: the target folder, to refuse writing through links it already holds; None skips that check.
    """
    links = {"/".join(_split_member(name)): target for name, kind, target in members if kind == "symlink"}
    for name, kind, target in members:
        try:
            _check_member(archive, name, kind, target, links, dest)
        except _ExistingLinkLeaves as err:
            raise DataError(archive, f"refusing member {name!r}: {err.link!r} is a link already in {dest} that "
                                     f"leads outside it (to {err.target!r})") from None


def _check_member(archive: Path, name: str, kind: str, target: str | None, links: dict[str, str],
                  dest: Path | None) -> None:
    """Refuse one member (see :func:`_check_members`)."""
    if _is_absolute(name):
        raise DataError(archive, f"refusing member {name!r}: absolute path")
    parts = _split_member(name)
    if ".." in parts:
        raise DataError(archive, f"refusing member {name!r}: '..' component")
    # Writing the member must not go through a link that leaves dest (check its folder).
    folder = _resolve_inside(parts[:-1], links, dest)
    if folder is None:
        raise DataError(archive, f"refusing member {name!r}: its folder is a link leaving the target")
    if dest is not None and parts:  # zipfile writes even a symlink member as a file, following a link there
        _existing_link(dest, "/".join(folder + parts[-1:]))
    if kind == "symlink":
        if target is None or _is_absolute(target) or \
                _resolve_inside(parts[:-1] + target.replace("\\", "/").split("/"), links, dest) is None:
            raise DataError(archive, f"refusing member {name!r}: symlink to {target!r} leaves the target")
    elif kind == "hardlink":  # tar hard-link names are relative to the archive root
        if target is None or _is_absolute(target) \
                or _resolve_inside(_split_member(target), links, dest) is None:
            raise DataError(archive, f"refusing member {name!r}: hard link to {target!r} leaves the target")


def _tar_members(archive: Path, tar: tarfile.TarFile) -> list[tuple[str, str, str | None]]:
    out = []
    for m in tar.getmembers():
        if m.issym():
            out.append((m.name, "symlink", m.linkname))
        elif m.islnk():
            out.append((m.name, "hardlink", m.linkname))
        elif m.isdir():
            out.append((m.name, "dir", None))
        elif m.isfile():
            out.append((m.name, "file", None))
        else:
            raise DataError(archive, f"refusing member {m.name!r}: device, fifo or other special file")
    return out


def _zip_members(zf: zipfile.ZipFile) -> list[tuple[str, str, str | None]]:
    out = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):  # the link target is stored as the member's data
            out.append((info.filename, "symlink", zf.read(info).decode("utf-8", "replace")))
        else:
            out.append((info.filename, "dir" if info.is_dir() else "file", None))
    return out


def _rar_extract(archive: Path, dest: Path) -> None:
    try:
        import rarfile
    except ImportError:
        raise DataError(archive, "RAR archives need the 'rarfile' package and an 'unrar' or 'bsdtar' binary "
                                 f"(pip install rarfile; apt-get install unrar), or extract by hand: "
                                 f"unrar x {archive} {dest}/") from None
    try:
        with rarfile.RarFile(archive) as rf:
            members = []
            for info in rf.infolist():
                if info.is_symlink():
                    redir = getattr(info, "file_redir", None)
                    target = redir[2] if redir else None  # unknown target -> refused by the check
                    members.append((info.filename, "symlink", target))
                else:
                    members.append((info.filename, "dir" if info.is_dir() else "file", None))
            _check_members(archive, members, dest)
            rf.extractall(dest)
    except rarfile.Error as err:
        raise DataError(archive, f"cannot extract RAR archive: {err}; extract it by hand into {dest}") from err


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a zip, tar (any compression) or RAR archive into dest, refusing unsafe members.

    Every member is checked before anything is written: absolute names, ``..`` components, symlinks or
    hard links that resolve outside dest (also through chains of the archive's own links), and members
    written through a link already in dest that leads outside it are refused.
    Tar extraction additionally uses Python's ``data`` filter. RAR needs the optional ``rarfile`` package.

    Args:
        archive: the archive file.
        dest: folder to extract into (created if needed).

    Raises:
        DataError: naming the archive and the offending member, or the archive when it cannot be read or a
            member cannot be written (it clashes with what dest already holds).
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(archive, "archive not found")
    with open(archive, "rb") as fh:
        magic = fh.read(8)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _extract(archive, dest, magic)
    except OSError as err:  # a member clashing with what dest holds: a folder, a dangling or looping link
        raise DataError(archive, f"cannot extract into {dest}: {err}") from err


def _extract(archive: Path, dest: Path, magic: bytes) -> None:
    """Check every member, then extract; the format is read from the first bytes (see :func:`safe_extract`)."""
    if magic.startswith(b"Rar!\x1a\x07"):
        _rar_extract(archive, dest)
    elif zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                _check_members(archive, _zip_members(zf), dest)
                zf.extractall(dest)
        except zipfile.BadZipFile as err:
            raise DataError(archive, f"corrupt zip archive: {err}") from err
    elif tarfile.is_tarfile(archive):
        try:
            with tarfile.open(archive) as tar:
                _check_members(archive, _tar_members(archive, tar), dest)
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, EOFError) as err:
            raise DataError(archive, f"corrupt or unsafe tar archive: {err}") from err
    else:
        raise DataError(archive, "not a zip, tar or RAR archive")


# --------------------------------------------------------------------------------------------------------
# Verified copies from a mirror
# --------------------------------------------------------------------------------------------------------

def _checked_relpath(relpath: str, origin: Path) -> str:
    parts = _split_member(relpath)
    if _is_absolute(relpath) or ".." in parts or not parts:
        raise DataError(origin, f"refusing path {relpath!r}: must be relative and stay inside the folder")
    return "/".join(parts)


def copy_verified(src_root: str | Path, dest_root: str | Path, entries: Iterable[tuple[str, str | None]],
                  *, progress: bool = True, desc: str = "copy") -> dict[str, str]:
    """Copy files from src_root to dest_root, keeping their relative layout and checking each sha256.

    Each copy is written under a temporary name, hashed, and renamed into place only when its hash matches,
    so an interrupted or failed copy leaves no half file. A destination file that already has the expected
    hash is not copied again.

    Args:
        src_root: folder to copy from (e.g. a dataset's mirror folder).
        dest_root: folder to copy into.
        entries: (relative path, expected sha256 or None) per file; None copies without checking.
        progress: show a tqdm bar.
        desc: label of the bar.

    Returns:
        Relative path -> sha256 of every copied or already-present file.

    Raises:
        DataError: a source file is missing, or its copy's hash differs from the expected one (naming the
            source file).
    """
    src_root, dest_root = Path(src_root), Path(dest_root)
    entries = list(entries)
    hashes: dict[str, str] = {}
    for relpath, expected in tqdm(entries, desc=desc, unit="file", disable=not progress):
        rel = _checked_relpath(relpath, src_root)
        expected = expected.lower() if expected is not None else None
        src, dst = src_root / rel, dest_root / rel
        if expected is not None and dst.is_file() and sha256_file(dst) == expected:
            hashes[rel] = expected
            continue
        if not src.is_file():
            raise DataError(src, "file listed in the manifest is missing from the mirror")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(src, tmp)
            actual = sha256_file(tmp)  # verify the copy, not just the source
            if expected is not None and actual != expected:
                raise DataError(src, f"sha256 mismatch for {rel}: manifest says {expected}, file has {actual}")
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        hashes[rel] = actual
    return hashes


# --------------------------------------------------------------------------------------------------------
# ISBI 2015
# --------------------------------------------------------------------------------------------------------

def _isbi_image_files(mirror_manifest: Path, ids: Iterable[str] | None) -> tuple[list[str], int]:
    """Relative paths of the images and annotations that the mirror's MANIFEST.json lists, and the image count.

    MANIFEST.json only maps image ids to paths here (and gives each image's scale to the reader); the
    expected hashes come from the committed manifest, which vouches for MANIFEST.json itself.
    """
    try:
        by_id = {f["id"]: f for f in json.loads(mirror_manifest.read_text())["files"]}
    except FileNotFoundError:
        raise DataError(mirror_manifest, "mirror has no MANIFEST.json") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(mirror_manifest, f"malformed manifest: {type(err).__name__}: {err}") from err
    wanted = list(by_id) if ids is None else [str(i) for i in ids]
    unknown = sorted(set(wanted) - set(by_id))
    if unknown:
        raise ValueError(f"image ids not in {mirror_manifest}: {unknown}")
    rels = []
    try:
        for image_id in wanted:
            rels.append(by_id[image_id]["path"])
            rels += [by_id[image_id]["annotations"][annotator]["path"] for annotator in ("400_senior", "400_junior")]
    except (KeyError, TypeError) as err:
        raise DataError(mirror_manifest, f"malformed entry for image {image_id!r}: missing {err}") from err
    return rels, len(wanted)


def _fetch_isbi_from_mirror(dest: Path, mirror: Path, ids, progress: bool, manifest: Manifest) -> tuple[dict, dict]:
    if not mirror.is_dir():
        raise DataError(mirror, f"mirror folder not found (check {MIRROR_ENV})")
    manifest.check_listing(mirror)
    # MANIFEST.json and README.txt first, verified, so the id -> path map is read from a checked copy.
    first = ["MANIFEST.json"] + (["README.txt"] if "README.txt" in manifest.sha256 else [])
    hashes = copy_verified(mirror, dest, manifest.entries(first), progress=False)
    rels, n_images = _isbi_image_files(dest / "MANIFEST.json", ids)
    hashes.update(copy_verified(mirror, dest, manifest.entries(rels), progress=progress, desc="isbi2015"))
    return {"source": "mirror", "mirror": str(mirror), "n_images": n_images}, hashes


def parse_figshare_files(payload: object, wanted: Iterable[str] = ISBI2015_ARCHIVES,
                         *, origin: str = "figshare API") -> dict[str, dict]:
    """Pick the download URL, md5 and size of named files out of a figshare ``/articles/<id>/files`` answer.

    Args:
        payload: the decoded JSON answer, a list of file records with ``name``, ``download_url``,
            ``computed_md5`` and ``size``.
        wanted: file names to pick.
        origin: where the answer came from, for error messages.

    Returns:
        name -> {"url": str, "md5": str, "size": int}.

    Raises:
        DataError: the answer is not a list of file records, a wanted file is missing, or a record lacks an
            https URL or an md5.
    """
    if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
        raise DataError(origin, "unexpected answer: expected a list of file records")
    by_name = {r.get("name"): r for r in payload}
    out = {}
    for name in wanted:
        record = by_name.get(name)
        if record is None:
            raise DataError(origin, f"file {name!r} not in the article (found {sorted(map(str, by_name))})")
        url, md5 = record.get("download_url"), record.get("computed_md5") or record.get("supplied_md5")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise DataError(origin, f"file {name!r} has no https download_url: {url!r}")
        if not isinstance(md5, str) or len(md5) != 32:
            raise DataError(origin, f"file {name!r} has no md5: {md5!r}")
        out[name] = {"url": url, "md5": md5.lower(), "size": int(record.get("size") or 0)}
    return out


def _download(url: str, dst: Path, md5: str, size: int, progress: bool) -> None:
    """Stream url into dst through a temporary name, checking its md5."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out, \
                tqdm(total=size or None, unit="B", unit_scale=True, desc=dst.name, disable=not progress) as bar:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise DataError(url, f"md5 mismatch: figshare says {md5}, download has {digest.hexdigest()}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch_isbi_from_figshare(dest: Path, progress: bool) -> tuple[dict, dict]:
    # deviation: docs/design.md §2.1 checks every file against a committed sha256; the figshare archives are checked
    # against the md5 figshare publishes with them instead (the project has no copy of the original BMPs to
    # hash), and the extracted files' sha256 are recorded in FETCHED.json.
    api = FIGSHARE_API.format(article=FIGSHARE_ARTICLE_ISBI2015)
    with urllib.request.urlopen(api, timeout=60) as response:
        files = parse_figshare_files(json.load(response), origin=api)
    dest.mkdir(parents=True, exist_ok=True)
    for name, info in files.items():
        archive = dest / name
        _download(info["url"], archive, info["md5"], info["size"], progress)
        safe_extract(archive, dest)
        archive.unlink()
    extracted = sorted(p for folder in ("RawImage", "AnnotationsByMD") for p in (dest / folder).rglob("*")
                       if p.is_file())
    hashes = {p.relative_to(dest).as_posix(): sha256_file(p) for p in extracted}
    n_images = sum(1 for rel in hashes if rel.startswith("RawImage/") and rel.lower().endswith(".bmp"))
    if n_images == 0:
        raise DataError(dest, "the figshare archives unpacked without any RawImage/<split>/NNN.bmp; check "
                              "their layout and move the folders into RawImage/ and AnnotationsByMD/")
    return {"source": "figshare", "mirror": None, "n_images": n_images}, hashes


def fetch_isbi2015(dest: str | Path, mirror: str | Path | None = None, *, ids: Iterable[str] | None = None,
                   progress: bool = True, manifest: str | Path | None = None) -> dict:
    """Fetch the ISBI 2015 cephalometric dataset into dest (docs/design.md §2.1).

    With a mirror (``$FARNET_DATA_MIRROR/isbi2015``, :func:`farnet.stages.fetch.mirror_root`), checks that it
    holds exactly the files of the committed manifest, then copies every image and both annotation files
    listed in the mirror's ``MANIFEST.json``, plus that file and README.txt, checking each against the
    committed sha256. Without one, downloads ``RawImage.rar`` and ``AnnotationsByMD.rar`` from figshare
    article 3471833 (md5-checked against figshare's answer) and extracts them (needs ``rarfile``). Writes
    ``dest/FETCHED.json``: the summary plus every file's sha256.

    Args:
        dest: folder to fill.
        mirror: the dataset's mirror folder (holding MANIFEST.json), or None to download.
        ids: only these image ids (e.g. ``["001", "151"]``); mirror only. None = all 400.
        progress: show progress bars.
        manifest: the expected sha256 of every mirror file; None = the committed
            ``farnet/data/manifests/isbi2015.sha256``.

    Returns:
        {"source": "mirror" | "figshare", "mirror": str | None, "n_images": int, "files": int}.

    Raises:
        DataError: a file fails its hash, the mirror lacks a listed file or holds an unlisted one, or
            neither source is reachable (the message says where to get the data).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.rglob(".*.tmp"):  # temporary files of an interrupted fetch
        stale.unlink()
    if mirror is not None:
        expected = Manifest.committed("isbi2015") if manifest is None else Manifest.read(manifest)
        summary, hashes = _fetch_isbi_from_mirror(dest, Path(mirror), ids, progress, expected)
    else:
        if ids is not None:
            raise ValueError("ids filters a mirror fetch only; the figshare archives hold all 400 images")
        try:
            summary, hashes = _fetch_isbi_from_figshare(dest, progress)
        except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as err:
            raise DataError(dest, f"cannot download ISBI 2015 from figshare ({err}). Get RawImage.rar and "
                                  f"AnnotationsByMD.rar from https://figshare.com/articles/dataset/"
                                  f"{FIGSHARE_ARTICLE_ISBI2015} and extract them into {dest}, or point "
                                  f"{MIRROR_ENV} at a folder holding isbi2015/ with its MANIFEST.json") from err
    summary["files"] = len(hashes)
    write_json(dest / "FETCHED.json", {**summary, "sha256": dict(sorted(hashes.items()))})
    return summary
