"""Safe archive extraction: zip, tar (any compression) and RAR, every member checked before anything is written.

docs/design.md §2.1: extraction refuses absolute member names, ``..`` components and links that leave the target
folder, both the archive's own links (also through chains of them) and links already in the folder, which tar's
``data`` filter refuses to write through but zipfile and rarfile do not.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PureWindowsPath

from farnet.core.errors import DataError

__all__ = ["safe_extract", "member_parts", "is_absolute_name"]

_MAX_LINK_HOPS = 40  # like the kernel's limit on nested symlinks


def member_parts(name: str) -> list[str]:
    """Components of an archive member name (or any relative path), splitting on both separators."""
    return [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]


def is_absolute_name(name: str) -> bool:
    """Whether a member name is absolute on POSIX or Windows (a drive, a root, a leading separator)."""
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
            if hops > _MAX_LINK_HOPS or is_absolute_name(target):
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
    links = {"/".join(member_parts(name)): target for name, kind, target in members if kind == "symlink"}
    for name, kind, target in members:
        try:
            _check_member(archive, name, kind, target, links, dest)
        except _ExistingLinkLeaves as err:
            raise DataError(archive, f"refusing member {name!r}: {err.link!r} is a link already in {dest} that "
                                     f"leads outside it (to {err.target!r})") from None


def _check_member(archive: Path, name: str, kind: str, target: str | None, links: dict[str, str],
                  dest: Path | None) -> None:
    """Refuse one member (see :func:`_check_members`)."""
    if is_absolute_name(name):
        raise DataError(archive, f"refusing member {name!r}: absolute path")
    parts = member_parts(name)
    if ".." in parts:
        raise DataError(archive, f"refusing member {name!r}: '..' component")
    # Writing the member must not go through a link that leaves dest (check its folder).
    folder = _resolve_inside(parts[:-1], links, dest)
    if folder is None:
        raise DataError(archive, f"refusing member {name!r}: its folder is a link leaving the target")
    if dest is not None and parts:  # zipfile writes even a symlink member as a file, following a link there
        _existing_link(dest, "/".join(folder + parts[-1:]))
    if kind == "symlink":
        if target is None or is_absolute_name(target) or \
                _resolve_inside(parts[:-1] + target.replace("\\", "/").split("/"), links, dest) is None:
            raise DataError(archive, f"refusing member {name!r}: symlink to {target!r} leaves the target")
    elif kind == "hardlink":  # tar hard-link names are relative to the archive root
        if target is None or is_absolute_name(target) \
                or _resolve_inside(member_parts(target), links, dest) is None:
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

