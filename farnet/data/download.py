"""Fetching ISBI 2015: from a local mirror, else downloaded from its official source (docs/design.md §2.1).

With ``FARNET_DATA_MIRROR`` set, the dataset's mirror folder is copied file by file, each checked against the
sha256 the project commits for it (:mod:`farnet.data.mirror`, :mod:`farnet.data.manifest`). Without one, the two
archives of figshare article 3471833 (``RawImage.rar``, ``AnnotationsByMD.rar``) are downloaded through a
temporary name, checked against the md5 figshare publishes, and unpacked by
:func:`~farnet.data.archives.safe_extract`. When neither works, the error says where to get the data. The other
datasets cannot be downloaded by script: their fetches (:func:`farnet.data.hand.fetch_hand`,
:func:`farnet.data.spine.fetch_spine`) copy from a mirror or say where to get them.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from farnet.core.errors import DataError
from farnet.data.archives import safe_extract
from farnet.data.manifest import Manifest, sha256_file
from farnet.data.mirror import MIRROR_ENV, clear_partial_files, copy_verified, mirror_folder, write_fetched

__all__ = ["FIGSHARE_ARTICLE_ISBI2015", "parse_figshare_files", "fetch_isbi2015"]

FIGSHARE_ARTICLE_ISBI2015 = 3471833
FIGSHARE_API = "https://api.figshare.com/v2/articles/{article}/files"
ISBI2015_ARCHIVES = ("RawImage.rar", "AnnotationsByMD.rar")
_CHUNK = 1 << 20  # 1 MiB, for downloads


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
    mirror = mirror_folder(mirror)
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
    clear_partial_files(dest)
    if mirror is not None:
        expected = Manifest.load("isbi2015", manifest)
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
    return write_fetched(dest, summary, hashes)
