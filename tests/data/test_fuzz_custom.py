"""Fuzzing the own-dataset reader: corrupted ``landmarks.csv`` files next to real images, seeded.

Where an independent, deliberately simple reference parser can decide (no quotes, the original header), a valid
CSV must load to exactly what was written and an invalid one must fail on the line it names; every error names
``landmarks.csv``.
"""

import math
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from farnet.core.errors import DataError
from farnet.data.custom import read_custom
from fuzzing import JUNK, REF_NUMBER, SEED, Failures, format_number, random_bytes, reference_text, spoil

# Pillow and pydicom warn about the corrupt files they are fed; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


CSV_WH = (20, 16)
CSV_HEADER = "image,a_x,a_y,b_x,b_y"
CSV_IMAGES = ["i0.png", "d/i1.png", "i2.png"]


def reference_custom(data: bytes, root: Path):
    """Simple parser of the documented CSV format, for files without quotes and with the original header:
    ({image: (K, 2)}, None) when valid, (None, line) when not, or "skip" when this parser does not decide."""
    text = reference_text(data)
    if text is None:
        return None, None
    if '"' in text:
        return "skip", None
    lines = re.split(r"\r\n|\r|\n", text)
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line != ""]
    if not numbered or [c.strip() for c in numbered[0][1].split(",")] != CSV_HEADER.split(","):
        return "skip", None
    if len(numbered) == 1:
        return None, numbered[0][0]
    seen, result = set(), {}
    for n, line in numbered[1:]:
        fields = line.split(",")
        if len(fields) != 5:
            return None, n
        rel = PurePosixPath(fields[0].strip())
        if (not fields[0].strip() or rel.is_absolute() or ".." in rel.parts or "\\" in fields[0]
                or "\x00" in fields[0] or not (root / rel).is_file()):
            return None, n
        values = []
        for cell in fields[1:]:
            cell = cell.strip()
            if not re.fullmatch(REF_NUMBER, cell) or not math.isfinite(float(cell)):
                return None, n
            values.append(float(cell))
        points = np.array(values).reshape(2, 2)
        w, h = CSV_WH
        if not np.all((points[:, 0] >= -0.5) & (points[:, 0] <= w - 0.5) & (points[:, 1] >= -0.5)
                      & (points[:, 1] <= h - 0.5)):
            return None, n
        if rel.as_posix() in seen:
            return None, n
        seen.add(rel.as_posix())
        result[rel.as_posix()] = points
    return result, None


def csv_cases(rng):
    """(case name, bytes) of valid and corrupted CSV files over :data:`CSV_IMAGES`."""
    def valid_rows():
        rows = []
        for image in CSV_IMAGES:
            xs, ys = rng.uniform(0, CSV_WH[0] - 1, 2), rng.uniform(0, CSV_WH[1] - 1, 2)
            rows.append(",".join([image] + [format_number(v, rng) for v in (xs[0], ys[0], xs[1], ys[1])]))
        return rows

    for i in range(15):
        yield f"valid#{i}", "\n".join([CSV_HEADER] + valid_rows()).encode() + b"\n"
    for i in range(150):
        rows = valid_rows()
        op = i % 10
        j = int(rng.integers(0, len(rows)))
        cells = rows[j].split(",")
        c = int(rng.integers(1, 5))
        if op == 0:
            cells[c] = JUNK[int(rng.integers(0, len(JUNK)))]
        elif op == 1:
            del cells[c]
        elif op == 2:
            cells.append(cells[c])
        elif op == 3:
            cells[0] = ["missing.png", "/abs.png", "../i0.png", "", "./i0.png", CSV_IMAGES[(j + 1) % 3],
                        "i0.png\x00", "d\\i1.png", "ünï.png"][int(rng.integers(0, 9))]
        elif op == 4:
            cells[c] = ["nan", "inf", "-inf", "NaN", "1e999", "-1", "19.6", "15.5", "-0.5"][int(rng.integers(0, 9))]
        elif op == 5:
            cells[c] = "".join(chr(int(x)) for x in rng.integers(32, 0x3000, int(rng.integers(1, 30))))
        elif op == 6:
            cells[c] = "7" * int(rng.integers(1000, 150_000))
        rows[j] = ",".join(cells)
        lines = [CSV_HEADER] + rows
        if op == 7:
            lines.insert(int(rng.integers(0, len(lines) + 1)), JUNK[int(rng.integers(0, len(JUNK)))])
        data = spoil("\n".join(lines).encode(), rng, {8: "flip", 9: "truncate"}.get(op))
        yield f"mutated#{i}(op {op})", data
    for i in range(5):
        yield f"random_bytes#{i}", random_bytes(rng, int(rng.integers(0, 300)))


def test_fuzz_read_custom(tmp_path):
    rng = np.random.default_rng(SEED + 2)
    for image in CSV_IMAGES:
        (tmp_path / image).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(CSV_WH[::-1], np.uint8)).save(tmp_path / image)
    failures = Failures()
    decided = 0
    cases = list(csv_cases(rng))
    for i, (case, data) in enumerate(cases):
        (tmp_path / "landmarks.csv").write_bytes(data)
        outcome, value = failures.run(case, read_custom, tmp_path)
        if outcome == "crash":
            continue
        expected, bad_line = reference_custom(data, tmp_path)
        if outcome == "error":
            failures.check(case, isinstance(value, DataError) and "landmarks.csv" in str(value), f"{value}")
        if expected == "skip":
            continue
        decided += 1
        if expected is not None:
            failures.check(case, outcome == "ok", f"valid CSV refused: {value}; {data[:200]!r}")
            if outcome == "ok":
                samples = value[0]
                got = {s.image_id: s.landmarks_px for s in samples}
                failures.check(case, list(got) == list(expected) and all(
                    np.array_equal(got[k], expected[k]) for k in expected), f"loaded {got}, file says {expected}")
        else:
            failures.check(case, outcome == "error", f"invalid CSV loaded; {data[:200]!r}")
            if outcome == "error" and bad_line is not None:
                failures.check(case, value.line == bad_line, f"error on line {value.line}, expected {bad_line}: "
                                                             f"{value}")
    failures.report()
    assert len(cases) >= 150 and decided >= 100
