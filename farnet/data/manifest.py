"""The expected sha256 of every file of a dataset, committed with the package (docs/design.md §2.1).

A mirror must never vouch for itself: a corrupted file next to a manifest it was hashed into passes any
check. So the project ships ``farnet/data/manifests/<dataset>.sha256``, one line per file of the dataset's
mirror in ``sha256sum`` format (``cd <mirror> && sha256sum -c <manifest>`` checks a folder by hand), and the
fetch stage checks every copy against it, and the mirror's listing: a missing or unlisted file is an error
naming it. A maintainer who adds a dataset or rebuilds a mirror makes its manifest once with
``write_manifest(MANIFEST_DIR / f"{name}.sha256", hash_folder(mirror))`` and commits it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from farnet.core.errors import DataError
from farnet.core.fileio import write_text

__all__ = ["MANIFEST_DIR", "sha256_file", "hash_folder", "write_manifest", "Manifest"]

MANIFEST_DIR = Path(__file__).with_name("manifests")
_CHUNK = 1 << 20  # 1 MiB
_MANIFEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")  # sha256sum's text (" ") or binary ("*") mode


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _list_files(root: Path) -> list[str]:
    """Relative posix paths of every file under root, and of every link (links are not followed), sorted."""
    found = []
    for folder, dirnames, filenames in os.walk(root):
        base = Path(folder).relative_to(root)
        found += [(base / name).as_posix() for name in filenames]
        found += [(base / name).as_posix() for name in dirnames if (Path(folder) / name).is_symlink()]
    return sorted(found)


def hash_folder(root: str | Path) -> dict[str, str]:
    """Relative posix path -> sha256 of every file under root, sorted: the content of its manifest."""
    root = Path(root)
    return {rel: sha256_file(root / rel) for rel in _list_files(root)}


def _manifest_path_problem(rel: str) -> str | None:
    """Why rel cannot be a manifest path (it must be relative, canonical, one line, with '/' only), or None."""
    if rel.startswith("/") or PureWindowsPath(rel).drive or any(c in rel for c in "\\\x00\n\r"):
        return "must be a relative path with '/' separators on one line"
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "must not have empty, '.' or '..' components"
    return None


def write_manifest(path: str | Path, hashes: Mapping[str, str]) -> Path:
    """Write relative path -> sha256 as a manifest, one ``<sha256>  <path>`` line per file, sorted by path.

    The format is ``sha256sum``'s, so ``cd <dataset> && sha256sum -c <manifest>`` checks a folder by hand. Make
    a dataset's manifest with ``write_manifest(path, hash_folder(mirror))``.

    Raises:
        ValueError: a path that is not relative and canonical (see :class:`Manifest`), or a bad hash.
    """
    lines = []
    for rel, digest in sorted(hashes.items()):
        problem = _manifest_path_problem(rel)
        if problem is not None:
            raise ValueError(f"manifest path {rel!r} {problem}")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{rel}: {digest!r} is not a lowercase hex sha256")
        lines.append(f"{digest}  {rel}\n")
    return write_text(path, "".join(lines))


@dataclass(frozen=True)
class Manifest:
    """The expected sha256 of every file of a dataset (docs/design.md §2.1), read from a ``sha256sum``-format file.

    Each line is ``<64 hex digits><space><space or *><relative path>``; paths use '/', have no empty, '.' or
    '..' components and appear once. The project ships one per dataset (:meth:`committed`), so a mirror
    never vouches for itself.

    Attributes:
        path: the manifest file, named in every error.
        sha256: relative path -> lowercase hex sha256.
    """

    path: Path
    sha256: Mapping[str, str]

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Parse a manifest file.

        Raises:
            DataError: the file is missing, not UTF-8, or has a malformed or repeated line (naming the line).
        """
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise DataError(path, "manifest not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(path, f"unreadable manifest: {err}") from err
        sha256: dict[str, str] = {}
        for number, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")  # a CRLF checkout
            if not line:
                continue
            match = _MANIFEST_LINE.fullmatch(line)
            if match is None:
                raise DataError(path, f"expected '<sha256>  <relative path>', got {line[:80]!r}", line=number)
            digest, rel = match.group(1).lower(), match.group(2)
            problem = _manifest_path_problem(rel)
            if problem is not None:
                raise DataError(path, f"path {rel!r} {problem}", line=number)
            if rel in sha256:
                raise DataError(path, f"{rel!r} is listed twice", line=number)
            sha256[rel] = digest
        return cls(path, sha256)

    @classmethod
    def committed(cls, dataset: str) -> Manifest:
        """The manifest the package ships for a dataset: ``farnet/data/manifests/<dataset>.sha256``."""
        return cls.read(MANIFEST_DIR / f"{dataset}.sha256")

    @classmethod
    def load(cls, dataset: str, path: str | Path | None = None) -> Manifest:
        """The manifest at ``path``, or the committed one of ``dataset`` when ``path`` is None."""
        return cls.committed(dataset) if path is None else cls.read(path)

    def entries(self, rels: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """(relative path, expected sha256) of rels (all when None), for :func:`farnet.data.mirror.copy_verified`.

        Raises:
            DataError: a path the manifest does not list.
        """
        rels = sorted(self.sha256) if rels is None else list(rels)
        unknown = [rel for rel in rels if rel not in self.sha256]
        if unknown:
            raise DataError(self.path, f"does not list {unknown[0]!r} ({len(unknown)} unlisted path(s))")
        return [(rel, self.sha256[rel]) for rel in rels]

    def compare(self, root: str | Path) -> tuple[list[str], list[str]]:
        """(missing, unlisted): listed files absent from root, and files (or links) under root not listed."""
        present = _list_files(Path(root))
        return sorted(set(self.sha256) - set(present)), sorted(set(present) - set(self.sha256))

    def missing_error(self, root: str | Path, missing: list[str]) -> DataError:
        """The error for listed files absent from root, naming the first and its expected sha256."""
        return DataError(Path(root) / missing[0], f"missing: {self.path} lists it with sha256 "
                                                  f"{self.sha256[missing[0]]} ({len(missing)} listed file(s) "
                                                  f"missing)")

    def unlisted_error(self, root: str | Path, unlisted: list[str]) -> DataError:
        """The error for files under root that the manifest does not list, naming the first."""
        return DataError(Path(root) / unlisted[0], f"not listed in {self.path}, which lists every file of the "
                                                   f"dataset ({len(unlisted)} unlisted file(s))")

    def check_listing(self, root: str | Path) -> None:
        """Raise when root lacks a listed file or holds an unlisted one (hashes are checked on copy).

        Raises:
            DataError: naming the first missing, else the first unlisted file.
        """
        missing, unlisted = self.compare(root)
        if missing:
            raise self.missing_error(root, missing)
        if unlisted:
            raise self.unlisted_error(root, unlisted)
