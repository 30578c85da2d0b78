"""Fuzzing the committed sha256 manifests: their reader on corrupted files, and mirrors checked against one.

A valid manifest must read to exactly what an independent parser of the sha256sum format reads, an invalid one
must fail on the line it names; a changed mirror must be refused naming a changed file, and a good one (an empty
folder or a link to the same bytes added) fetched.
"""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from farnet.core.errors import DataError
from fuzzing import SEED, Failures, flip_bytes, numbered_files, random_bytes, spoil

# Pillow and pydicom warn about the corrupt files they are fed; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


_REF_MANIFEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


def reference_manifest(data: bytes):
    """Independent parser of the sha256sum format the manifests use: ({path: sha256}, None), or (None, line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, None
    found = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if line == "":
            continue
        match = _REF_MANIFEST_LINE.fullmatch(line)
        if match is None:
            return None, number
        rel = match.group(2)
        if (rel.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", rel) or any(c in rel for c in "\\\x00\r")
                or any(part in ("", ".", "..") for part in rel.split("/")) or rel in found):
            return None, number
        found[rel] = match.group(1).lower()
    return found, None


MANIFEST_JUNK = ["", " ", "x", "0" * 64, "0" * 64 + " ", "0" * 64 + "  ", "0" * 64 + "  /abs", "0" * 64 + "  a/../b",
                 "0" * 64 + " *ok", "0" * 64 + "\tx", "g" * 64 + "  x", "0" * 65 + "  x", "0" * 63 + "  x",
                 "0" * 64 + "  C:x", "0" * 64 + "  a\\b", "0" * 64 + "  ./a", "0" * 64 + "  a//b", "0" * 64 + "  a/",
                 "0" * 64 + "   lead space", "0" * 64 + "  tail space ", "0" * 64 + "  ünï cødé", "# comment",
                 "0" * 64 + "  a\x00b", "0" * 64 + "  a\u2028b", "\ufeff" + "0" * 64 + "  bom", "F" * 64 + "  HEX"]


def valid_manifest_lines(rng):
    """Five valid sha256sum lines with random digests, names with spaces and folders among them."""
    names = ["README.txt", "data/a 1.jpg", "labels/a 1.jpg.mat", "setup/cv/set1/train.txt", "images/3001.png"]
    return [f"{hashlib.sha256(bytes([i]) + bytes(rng.integers(0, 256, 4, dtype=np.uint8))).hexdigest()}  {n}"
            for i, n in enumerate(names)]


def manifest_cases(rng):
    """(case name, bytes) of valid and corrupted manifests."""
    for i in range(20):
        newline = ["\n", "\r\n"][i % 2]
        yield f"valid#{i}", (newline.join(valid_manifest_lines(rng)) + newline * (i % 3 > 0)).encode()
    for i in range(180):
        lines = valid_manifest_lines(rng)
        op = i % 6
        j = int(rng.integers(0, len(lines)))
        if op == 0:
            lines.insert(j, MANIFEST_JUNK[int(rng.integers(0, len(MANIFEST_JUNK)))])
        elif op == 1:
            lines[j] = MANIFEST_JUNK[int(rng.integers(0, len(MANIFEST_JUNK)))]
        elif op == 2:
            lines.insert(j, lines[int(rng.integers(0, len(lines)))].replace(" ", " *", 1) if j % 2 else lines[j])
        data = spoil("\n".join(lines).encode(), rng, {3: "flip", 4: "truncate"}.get(op))
        if op == 5:
            data = data.replace(b"\n", [b"\r\n", b"\r", b"\n\n", b"\x0b"][int(rng.integers(0, 4))])
        yield f"mutated#{i}(op {op})", data
    yield "random_bytes", random_bytes(rng, 500)
    yield "long_line", b"0" * 64 + b"  " + b"a" * 200_000


def test_fuzz_manifest_reader(tmp_path):
    from farnet.data.manifest import Manifest

    rng = np.random.default_rng(SEED + 5)
    failures = Failures()
    cases = list(manifest_cases(rng))
    for case, data, path in numbered_files(tmp_path, cases, ".sha256"):
        outcome, value = failures.run(case, Manifest.read, path)
        if outcome == "crash":
            continue
        expected, bad_line = reference_manifest(data)
        if expected is not None:
            failures.check(case, outcome == "ok", f"valid manifest refused: {value}; {data[:200]!r}")
            if outcome == "ok":
                failures.check(case, dict(value.sha256) == expected, f"read {dict(value.sha256)}, file says {expected}")
        else:
            failures.check(case, outcome == "error", f"invalid manifest loaded; {data[:200]!r}")
            if outcome == "error":
                failures.check(case, isinstance(value, DataError) and value.path == path, f"{value}")
                failures.check(case, value.line == bad_line, f"error on line {value.line}, expected {bad_line}")
    failures.report()
    assert len(cases) >= 200


def make_spine_tree(root: Path, rng) -> Path:
    """A tiny spine mirror (two images per split folder, random bytes: the fetch never decodes them)."""
    for split_dir in ("training", "test"):
        (root / "data" / split_dir).mkdir(parents=True)
        (root / "labels" / split_dir).mkdir(parents=True)
        names = [f"img {split_dir} {k}.jpg" for k in range(2)]
        for name in names:
            (root / "data" / split_dir / name).write_bytes(random_bytes(rng, 200))
            (root / "labels" / split_dir / f"{name}.mat").write_bytes(random_bytes(rng, 100))
        (root / "labels" / split_dir / "filenames.csv").write_text("".join(f"{n}\n" for n in names))
        (root / "labels" / split_dir / "landmarks.csv").write_text("0.5\n0.25\n")
        (root / "labels" / split_dir / "angles.csv").write_text("1,2,3\n4,5,6\n")
    (root / "README.txt").write_text("tiny\n")
    return root


def mutate_mirror(root: Path, rng, op: int) -> tuple[str, list[str]]:
    """Change the mirror; returns (what was done, files the error must name: [] when the mirror is still good)."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    rel = files[int(rng.integers(0, len(files)))]
    path = root / rel
    data = path.read_bytes()
    if op == 0:
        path.write_bytes(flip_bytes(data, rng) if data else b"x")
    elif op == 1:
        path.write_bytes(data[: int(rng.integers(0, len(data)))])
    elif op == 2:
        path.unlink()
    elif op == 3:
        extra = ["extra.txt", ".hidden", "data/training/new.jpg", "labels/test/x/y.csv", "README.txt.bak",
                 "data/training/img training 0.jpg ", "emptyname/"][int(rng.integers(0, 7))]
        if extra.endswith("/"):
            (root / extra).mkdir(exist_ok=True)  # an empty folder is no file: still good
            return f"made folder {extra}", []
        (root / extra).parent.mkdir(parents=True, exist_ok=True)
        (root / extra).write_bytes(b"unlisted")
        return f"added {extra}", [extra]
    elif op == 4:
        path.rename(path.with_name(path.name + ".moved"))
        return f"renamed {rel}", [rel, rel + ".moved"]
    elif op == 5:
        other = files[int(rng.integers(0, len(files)))]
        if (root / other).read_bytes() == data:
            return "swapped a file with itself", []
        path.write_bytes((root / other).read_bytes())
        (root / other).write_bytes(data)
        return f"swapped {rel} and {other}", [rel, other]
    elif op == 6:
        copy = root.parent / f"{root.name}_elsewhere"
        copy.mkdir(exist_ok=True)
        (copy / "f").write_bytes(data)
        path.unlink()
        path.symlink_to(copy / "f")  # the same bytes through a link: still good
        return f"linked {rel}", []
    else:
        path.unlink()
        path.mkdir()
        return f"made {rel} a folder", [rel]
    return f"op {op} on {rel}", [rel]


def test_fuzz_mirror_checked_against_its_manifest(tmp_path):
    from farnet.data.manifest import Manifest, hash_folder, write_manifest
    from farnet.data.spine import fetch_spine

    rng = np.random.default_rng(SEED + 6)
    failures = Failures()
    refused = 0
    for i in range(64):
        mirror = make_spine_tree(tmp_path / f"m{i}" / "mirror", rng)
        manifest = write_manifest(tmp_path / f"m{i}" / "spine.sha256", hash_folder(mirror))
        done, named = mutate_mirror(mirror, rng, i % 8) if i % 9 else ("nothing", [])
        case = f"mirror#{i} ({done})"
        dest = tmp_path / f"m{i}" / "out"
        outcome, value = failures.run(case, fetch_spine, dest, mirror, progress=False, manifest=manifest)
        if outcome == "crash":
            continue
        if not named:
            failures.check(case, outcome == "ok", f"a good mirror was refused: {value}")
            if outcome == "ok":
                failures.check(case, hash_folder(dest) | {"FETCHED.json": None} ==
                               dict(Manifest.read(manifest).sha256) | {"FETCHED.json": None}, "fetched other files")
            continue
        refused += 1
        failures.check(case, outcome == "error", "a changed mirror was fetched")
        if outcome == "error":
            failures.check(case, any(str(mirror / rel) in str(value) for rel in named),
                           f"the error names none of {named}: {value}")
            failures.check(case, not (dest / "FETCHED.json").exists(), "FETCHED.json written for a refused fetch")
    failures.report()
    assert refused >= 35
