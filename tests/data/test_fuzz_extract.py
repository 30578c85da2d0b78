"""Fuzzing archive extraction into a folder that already holds links, some leading out of it.

Nothing may be written outside the target folder; a member whose path reaches a link leading out must be refused,
before anything is written; a plain archive beside no link must extract to its own bytes.
"""

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fuzzing import SEED, Failures

# Pillow and pydicom warn about the corrupt files they are fed; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


# Links made in dest before extraction, name -> target: some stay inside dest, some lead out of it.
LINK_TARGETS = ["real", "real/sub", "../dest/real", "nothere", "../outside", "../outside/f", "..", "../..",
                "ABSOLUTE_OUTSIDE", "ABSOLUTE_INSIDE", "b", "a/.."]
LINK_NAMES = ["a", "b", "c", "real/l"]
MEMBER_NAMES = ["a", "a/x", "b/y/z", "c", "c/x", "real/l/x", "real/sub/x", "f", "d/f", "real/new"]
ARCHIVE_LINK_TARGETS = ["real", "a", "b/..", "../x", "real/sub", "c/x"]


def make_dest_with_links(root: Path, links: dict[str, str]) -> tuple[Path, Path]:
    """root/dest (real/, real/sub/, real/file) with the given links, and root/outside with one file."""
    dest, outside = root / "dest", root / "outside"
    (dest / "real" / "sub").mkdir(parents=True)
    (dest / "real" / "file").write_bytes(b"inside")
    outside.mkdir()
    (outside / "f").write_bytes(b"outside")
    for name, target in links.items():
        target = {"ABSOLUTE_OUTSIDE": str(outside), "ABSOLUTE_INSIDE": str(dest / "real")}.get(target, target)
        (dest / name).symlink_to(target)
    return dest, outside


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under folder (links not followed): a link's target, a file's bytes, or None for a folder."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
    return out


def leaves_through_existing_link(dest: Path, names: list[str]) -> bool:
    """Reference: does a member's own path (as written) reach a link made before extraction that leads out?"""
    root = os.path.realpath(dest)
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            path = dest.joinpath(*parts[:i])
            if path.is_symlink() and os.path.commonpath([os.path.realpath(path), root]) != root:
                return True
    return False


def write_archive(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """A .zip or .tar at ``path`` of (name, "file" or "symlink", bytes or link target) members."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, kind, payload in members:
                info = zipfile.ZipInfo(name)
                info.external_attr = ((stat.S_IFLNK | 0o777) if kind == "symlink" else (stat.S_IFREG | 0o644)) << 16
                zf.writestr(info, payload)
    else:
        with tarfile.open(path, "w") as tar:
            for name, kind, payload in members:
                info = tarfile.TarInfo(name)
                if kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, payload
                    tar.addfile(info)
                else:
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return path


def existing_link_cases(rng):
    """(case name, links made in dest, archive members, archive suffix)."""
    for i in range(120):
        names = list(rng.permutation(LINK_NAMES)[: int(rng.integers(0, 4))])
        links = {str(n): LINK_TARGETS[int(rng.integers(0, len(LINK_TARGETS)))] for n in names}
        members, chosen = [], []
        for name in rng.permutation(MEMBER_NAMES)[: int(rng.integers(1, 5))]:
            name = str(name)
            if any(name == c or name.startswith(c + "/") or c.startswith(name + "/") for c in chosen):
                continue  # a file and a folder of the same name cannot both be extracted
            chosen.append(name)
            if rng.random() < 0.15:
                members.append((name, "symlink", ARCHIVE_LINK_TARGETS[int(rng.integers(0, 6))]))
            else:
                members.append((name, "file", f"payload {name}".encode()))
        yield f"case#{i} links={links} members={[m[:2] for m in members]}", links, members, [".zip", ".tar"][i % 2]


def test_fuzz_safe_extract_into_a_folder_with_links(tmp_path):
    from farnet.data.archives import safe_extract

    rng = np.random.default_rng(SEED + 4)
    failures = Failures()
    cases = list(existing_link_cases(rng))
    must_refuse = must_load = 0
    for i, (case, links, members, suffix) in enumerate(cases):
        root = tmp_path / f"c{i}"
        dest, outside = make_dest_with_links(root, links)
        archive = write_archive(root / f"a{suffix}", members)
        before, outside_before = snapshot(dest), snapshot(outside)
        outcome, value = failures.run(case, safe_extract, archive, dest)
        if outcome == "crash":
            continue
        failures.check(case, snapshot(outside) == outside_before, "wrote outside the target folder")
        refuse = leaves_through_existing_link(dest, [m[0] for m in members])
        must_refuse += refuse
        if refuse:
            failures.check(case, outcome == "error", "extracted through a link leading out of the target")
        if outcome == "error":
            failures.check(case, str(archive) in str(value), f"error does not name the archive: {value}")
            if "refusing member" in str(value):
                failures.check(case, snapshot(dest) == before, "refused after writing")
        prefixes = {"/".join(name.split("/")[:k]) for name, _, _ in members for k in range(1, name.count("/") + 2)}
        if not prefixes & set(links) and all(kind == "file" for _, kind, _ in members):
            must_load += 1
            failures.check(case, outcome == "ok", f"a plain archive was refused: {value}")
            if outcome == "ok":
                failures.check(case, all((dest / name).read_bytes() == payload for name, _, payload in members),
                               "extracted other bytes")
    failures.report()
    assert len(cases) >= 120 and must_refuse >= 20 and must_load >= 20
