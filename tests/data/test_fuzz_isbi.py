"""Fuzzing the ISBI 2015 reader: corrupted annotation files, and a tiny fake mirror tree with one part spoilt.

A valid annotation file must load to exactly what was written, an invalid one must fail on the line an
independent, deliberately simple reference parser names. A tree loads only when both doctors' files are valid, and
then to their mean.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farnet.core.errors import DataError
from farnet.data.isbi import read_annotation, read_isbi2015
from fuzzing import (JUNK, REF_NUMBER, SEED, Failures, base_images, flip_bytes, format_number, numbered_files,
                     png_with_size, random_bytes, reference_text, spoil)

# Pillow and pydicom warn about the corrupt files they are fed; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


K = 5
ANN_WH = (50, 40)
_REF_LINE = re.compile(rf"[ \t]*({REF_NUMBER})[ \t]*,[ \t]*({REF_NUMBER})[ \t]*")


def reference_annotation(data: bytes, k: int, image_wh):
    """Independent parser of the documented format: (points, None) when valid, else (None, line or None)."""
    text = reference_text(data)
    if text is None:
        return None, None
    lines = re.split(r"\r\n|\r|\n", text)
    points = []
    for index in range(k):
        match = _REF_LINE.fullmatch(lines[index]) if index < len(lines) else None
        if match is None:
            return None, index + 1
        x, y = float(match.group(1)), float(match.group(2))
        if not (math.isfinite(x) and math.isfinite(y)):
            return None, index + 1
        if image_wh is not None and not (-0.5 <= x <= image_wh[0] - 0.5 and -0.5 <= y <= image_wh[1] - 0.5):
            return None, index + 1
        points.append((x, y))
    return np.array(points), None


def valid_annotation(rng, k=K, wh=ANN_WH, extra_lines=None):
    """The lines of a valid annotation file: ``k`` points inside ``wh``, then 0-2 ignored trailing lines."""
    points = np.stack([rng.uniform(0, wh[0] - 1, k), rng.uniform(0, wh[1] - 1, k)], axis=-1)
    lines = [f"{format_number(x, rng)},{format_number(y, rng)}" for x, y in points]
    extra = int(rng.integers(0, 3)) if extra_lines is None else extra_lines
    lines += ["a,b,c", "12"][:extra]  # trailing lines are ignored (the official files have some)
    return lines


def annotation_cases(rng):
    """(case name, bytes) of valid and corrupted annotation files."""
    for i in range(40):
        lines = valid_annotation(rng)
        newline = ["\n", "\r\n", "\r"][i % 3]
        text = newline.join(lines) + (newline if i % 2 else "")
        yield f"valid#{i}", (("\ufeff" if i % 5 == 0 else "") + text).encode()
    for i in range(160):
        lines = valid_annotation(rng)
        op = i % 8
        j = int(rng.integers(0, len(lines)))
        if op == 0:
            lines[j] = JUNK[int(rng.integers(0, len(JUNK)))]
        elif op == 1:
            lines[j] = lines[j].split(",")[0]  # a missing field
        elif op == 2:
            lines[j] = lines[j] + "," + lines[j]  # extra fields
        elif op == 3:
            lines[j] = "".join(chr(int(c)) for c in rng.integers(32, 0x3000, int(rng.integers(1, 40))))
        elif op == 4:
            lines[j] = "1" * int(rng.integers(1000, 200_000)) + ",2"  # a very long line (huge number: inf)
        elif op == 5:
            del lines[j:]  # too few lines
        data = spoil("\n".join(lines).encode(), rng, {6: "flip", 7: "truncate"}.get(op))
        yield f"mutated#{i}(op {op})", data
    for i in range(10):
        yield f"random_bytes#{i}", random_bytes(rng, int(rng.integers(0, 400)))
    yield "long_random_line", ("x" * 1_000_000).encode()


def test_fuzz_read_annotation(tmp_path):
    rng = np.random.default_rng(SEED + 1)
    failures = Failures()
    cases = list(annotation_cases(rng))
    for case, data, path in numbered_files(tmp_path, cases, ".txt"):
        for image_wh in (ANN_WH, None):
            label = f"{case} wh={image_wh}"
            outcome, value = failures.run(label, read_annotation, path, K, image_wh)
            if outcome == "crash":
                continue
            expected, bad_line = reference_annotation(data, K, image_wh)
            if expected is not None:
                failures.check(label, outcome == "ok", f"valid file refused: {value}; {data[:120]!r}")
                if outcome == "ok":
                    failures.check(label, np.array_equal(value, expected) and value.shape == (K, 2),
                                   f"loaded {value.tolist()} but the file says {expected.tolist()}")
            else:
                failures.check(label, outcome == "error", f"invalid file loaded as {value}; {data[:120]!r}")
                if outcome == "error":
                    failures.check(label, isinstance(value, DataError) and value.path == path, f"{value}")
                    failures.check(label, value.line == bad_line, f"error on line {value.line}, expected "
                                                                  f"{bad_line}: {value}")
    failures.report()
    assert len(cases) >= 200


def make_isbi_tree(root: Path, rng):
    """Mirror layout, image 001 only: stored 24x20 JPEG at scale 0.5 of a 48x40 original, 19 landmarks."""
    image = root / "RawImage" / "TrainingData" / "001.jpg"
    image.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(image)
    manifest = {"files": [{"id": "001", "path": "RawImage/TrainingData/001.jpg", "original_width": 48,
                           "original_height": 40, "stored_width": 24, "stored_height": 20,
                           "scale_x": 0.5, "scale_y": 0.5}]}
    (root / "MANIFEST.json").write_text(json.dumps(manifest))
    annotations = {}
    for doctor in ("400_senior", "400_junior"):
        folder = root / "AnnotationsByMD" / doctor
        folder.mkdir(parents=True)
        lines = valid_annotation(rng, k=19, wh=(48, 40))
        (folder / "001.txt").write_text("\n".join(lines) + "\n")
        annotations[doctor] = (folder / "001.txt").read_bytes()
    return image, manifest, annotations


def test_fuzz_read_isbi2015_tree(tmp_path):
    rng = np.random.default_rng(SEED + 3)
    failures = Failures()
    cases = 0
    for i in range(130):
        root = tmp_path / f"tree{i}"
        image, manifest, annotations = make_isbi_tree(root, rng)
        target = i % 4
        if target == 0:  # an annotation file
            doctor = ["400_senior", "400_junior"][i % 8 // 4]
            data = annotations[doctor]
            data = [flip_bytes(data, rng), data[: int(rng.integers(0, len(data)))],
                    data.replace(b"\n", b"\nnan,1\n", 1), random_bytes(rng)][int(rng.integers(0, 4))]
            annotations[doctor] = data
            (root / "AnnotationsByMD" / doctor / "001.txt").write_bytes(data)
        elif target == 1:  # the image
            data = image.read_bytes()
            image.write_bytes([flip_bytes(data[:100], rng) + data[100:], data[: int(rng.integers(0, 60))],
                               random_bytes(rng), png_with_size(base_images()["png"][1], 99_999, 99_999)]
                              [int(rng.integers(0, 4))])
        elif target == 2:  # the manifest's values
            entry = manifest["files"][0]
            key = list(entry)[int(rng.integers(0, len(entry)))]
            entry[key] = [None, -1, 0, 1e400, "x", [1], {"a": 1}, 10**30, "../../etc/passwd", float("nan"),
                          "RawImage/TrainingData/\x00.jpg", 25, 2.5][int(rng.integers(0, 13))]
            (root / "MANIFEST.json").write_text(json.dumps(manifest))
        else:  # the manifest's bytes
            data = (root / "MANIFEST.json").read_bytes()
            data = [flip_bytes(data, rng), data[: int(rng.integers(0, len(data)))], b"[" * 100_000,
                    b"\xff\xfe" + data, b'{"files": 5}'][int(rng.integers(0, 5))]
            (root / "MANIFEST.json").write_bytes(data)
        case = f"tree#{i} (target {target})"
        outcome, value = failures.run(case, read_isbi2015, root, "train", ids=["001"])
        cases += 1
        if outcome != "ok":
            continue
        refs = [reference_annotation(annotations[d], 19, (48, 40))[0] for d in ("400_senior", "400_junior")]
        failures.check(case, all(r is not None for r in refs), "loaded although an annotation file is invalid")
        if all(r is not None for r in refs):
            failures.check(case, np.array_equal(value[0].landmarks_px, np.mean(refs, axis=0)),
                           "landmarks differ from the files' mean")
    failures.report()
    assert cases >= 100
