"""Fuzzing the readers: hundreds of corrupted images and annotation files, seeded.

Every case must either load correctly or raise :class:`farnet.core.errors.FarnetError`: never another exception, never
a hang (each case has a time budget, enforced by SIGALRM), never a silently wrong value. "Correctly" is checked
against independent, deliberately simple reference parsers: a valid annotation file must load to exactly what was
written, an invalid one must fail on the line the reference names; a truncated image must fail or decode to the
original pixels.
"""

import hashlib
import io
import json
import math
import os
import re
import signal
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from farnet.data.custom import read_custom
from farnet.data.imageio import read_grayscale, read_image_size
from farnet.data.isbi import read_annotation, read_isbi2015
from farnet.core.errors import DataError, FarnetError

# Pillow and pydicom warn about the corrupt files they are fed; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

SEED = 20150419
CASE_BUDGET_S = 3.0  # per case; generous for a busy 2-core machine, tiny for the work a case does


class CaseTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that no reader's ``except Exception`` can swallow it."""


@contextmanager
def time_budget(seconds):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def attempt(fn, *args, **kwargs):
    """("ok", value) or ("error", FarnetError); any other exception, or a hang, propagates as a failure."""
    start = time.perf_counter()
    with time_budget(CASE_BUDGET_S):
        try:
            result = ("ok", fn(*args, **kwargs))
        except FarnetError as err:
            result = ("error", err)
    assert time.perf_counter() - start < CASE_BUDGET_S
    return result


class Failures(list):
    def check(self, case, condition, detail=""):
        if not condition:
            self.append(f"{case}: {detail}")

    def run(self, case, fn, *args, **kwargs):
        try:
            return attempt(fn, *args, **kwargs)
        except CaseTimeout as err:
            self.append(f"{case}: HANG ({err})")
        except Exception as err:  # noqa: BLE001 - exactly what the fuzz test looks for
            self.append(f"{case}: {type(err).__name__}: {err}"[:300])
        return ("crash", None)

    def report(self):
        assert not self, f"{len(self)} failing cases:\n" + "\n".join(self[:30])


# ---- mutations of bytes ----------------------------------------------------------------------------------------

def flip_bytes(data: bytes, rng, n=None) -> bytes:
    out = bytearray(data)
    for _ in range(n or int(rng.integers(1, 9))):
        i = int(rng.integers(0, len(out)))
        out[i] ^= int(rng.integers(1, 256))
    return bytes(out)


def random_bytes(rng, n=None) -> bytes:
    return rng.integers(0, 256, int(n if n is not None else rng.integers(1, 3000)), dtype=np.uint8).tobytes()


# ---- images ----------------------------------------------------------------------------------------------------

IMG_H, IMG_W = 20, 24


def base_images():
    """name -> (suffix, valid bytes, decoded uint8 image our reader must give for them)."""
    rng = np.random.default_rng(SEED)
    grey = rng.integers(0, 256, (IMG_H, IMG_W), dtype=np.uint8)
    grey[0, 0], grey[0, 1] = 0, 255

    def encode(array, fmt, **kw):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, fmt, **kw)
        return buffer.getvalue()

    from test_predict import dicom_bytes

    rgb = np.stack([grey, grey, grey], axis=-1)
    sixteen = grey.astype(np.uint16) * 257
    images = {
        "bmp": (".bmp", encode(grey, "BMP"), grey),
        "png": (".png", encode(grey, "PNG"), grey),
        "png_rgb": (".png", encode(rgb, "PNG"), grey),
        "png16": (".png", encode(sixteen, "PNG"), grey),
        "jpg": (".jpg", encode(grey, "JPEG", quality=90), None),
        "tif": (".tif", encode(grey, "TIFF"), grey),
        "tif16_deflate": (".tiff", encode(sixteen, "TIFF", compression="tiff_deflate"), grey),
        "dcm": (".dcm", dicom_bytes(grey), grey),
    }
    return images


def png_with_size(data: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR size replaced (and the chunk's CRC recomputed, so only the size is wrong)."""
    ihdr = bytearray(data[8:33])  # length(4) 'IHDR' width height depth colour ... crc
    ihdr[8:16] = struct.pack(">II", width, height)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])) & 0xFFFFFFFF)
    return data[:8] + bytes(ihdr) + data[33:]


def bmp_with_size(data: bytes, width: int, height: int) -> bytes:
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def dicom_with_size(rows: int, cols: int) -> bytes:
    import pydicom

    from test_predict import dicom_bytes

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((4, 4), np.uint8))))
    ds.Rows, ds.Columns = rows, cols
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def image_cases(rng):
    """(case name, suffix, bytes, kind) with kind "valid", "truncated" (must fail or equal the original),
    "must_fail" or "any" (may load: byte flips in pixel data cannot be detected by any reader)."""
    images = base_images()
    names = list(images)
    for name, (suffix, data, _) in images.items():
        yield f"{name}/valid", suffix, data, "valid"
        yield f"{name}/empty", suffix, b"", "must_fail"
        for i in range(7):
            cut = int(rng.integers(1, len(data)))
            yield f"{name}/truncated@{cut}", suffix, data[:cut], "truncated"
        for i in range(8):
            yield f"{name}/flips#{i}", suffix, flip_bytes(data, rng), "any"
        yield f"{name}/header_flips", suffix, flip_bytes(data[:64], rng, 3) + data[64:], "any"
        yield f"{name}/random", suffix, random_bytes(rng), "any"
        yield f"{name}/magic+random", suffix, data[:16] + random_bytes(rng), "any"
        other = images[names[int(rng.integers(0, len(names)))]][1]
        yield f"{name}/foreign_header", suffix, other[:40] + data[40:], "any"
        yield f"{name}/doubled", suffix, data + data, "any"
    png = images["png"][1]
    for width, height in [(100_000, 100_000), (2**31 - 1, 1), (12_000, 12_000), (0, 5), (30_000, 3)]:
        yield f"png/huge_{width}x{height}", ".png", png_with_size(png, width, height), "must_fail"
    bmp = images["bmp"][1]
    for width, height in [(100_000, 100_000), (-5, 20), (24, 2**30), (0, 0)]:
        yield f"bmp/huge_{width}x{height}", ".bmp", bmp_with_size(bmp, width, height), "must_fail"
    for rows, cols in [(65_535, 65_535), (3000, 3000), (0, 4)]:
        yield f"dcm/huge_{rows}x{cols}", ".dcm", dicom_with_size(rows, cols), "must_fail"
    yield "png_named_dcm", ".dcm", png, "must_fail"
    yield "text_named_png", ".png", b"P2\nnot really an image\n", "must_fail"
    yield "zeros_named_tif", ".tif", bytes(500), "must_fail"


def test_fuzz_image_readers(tmp_path):
    rng = np.random.default_rng(SEED)
    references = {name: (data, decoded) for name, (_, data, decoded) in base_images().items()}
    failures = Failures()
    count = 0
    for i, (case, suffix, data, kind) in enumerate(image_cases(rng)):
        path = tmp_path / f"{i:04d}{suffix}"
        path.write_bytes(data)
        outcome, value = failures.run(case, read_grayscale, path)
        size_outcome, size = failures.run(case + " (header)", read_image_size, path)
        count += 1
        if outcome == "crash":
            continue
        base = case.split("/")[0]
        original = references.get(base, (None, None))[1]
        if outcome == "error":
            failures.check(case, str(path) in str(value), f"error does not name the file: {value}")
            failures.check(case, kind != "valid", f"valid file refused: {value}")
            continue
        failures.check(case, kind != "must_fail", "loaded a file that must fail")
        ok_array = (isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 2
                    and min(value.shape) > 0)
        failures.check(case, ok_array, f"not a non-empty (H, W) uint8 array: {getattr(value, 'shape', value)}")
        if not ok_array:
            continue
        failures.check(case, size_outcome == "ok" and size == (value.shape[1], value.shape[0]),
                       f"header size {size} != decoded {value.shape}")
        if kind == "valid" and original is not None:
            failures.check(case, np.array_equal(value, original), "valid file decoded to other pixels")
        if kind == "truncated":
            if original is None:  # JPEG: the valid file's own decoding is the reference
                original = read_grayscale(_write(tmp_path / f"ref{suffix}", references[base][0]))
            failures.check(case, np.array_equal(value, original), "truncated file decoded to other pixels")
    failures.report()
    assert count >= 150


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- ISBI-style annotation files ---------------------------------------------------------------------------------

K = 5
ANN_WH = (50, 40)
_REF_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_REF_LINE = re.compile(rf"[ \t]*({_REF_NUMBER})[ \t]*,[ \t]*({_REF_NUMBER})[ \t]*")


def reference_annotation(data: bytes, k: int, image_wh):
    """Independent parser of the documented format: (points, None) when valid, else (None, line or None)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
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


def format_number(value, rng):
    style = int(rng.integers(0, 5))
    return [f"{value:.0f}", f"{value:.3f}", f"{value:e}", f" {value:g} ", f"+{value:.1f}"][style]


def valid_annotation(rng, k=K, wh=ANN_WH, extra_lines=None):
    points = np.stack([rng.uniform(0, wh[0] - 1, k), rng.uniform(0, wh[1] - 1, k)], axis=-1)
    lines = [f"{format_number(x, rng)},{format_number(y, rng)}" for x, y in points]
    extra = int(rng.integers(0, 3)) if extra_lines is None else extra_lines
    lines += ["a,b,c", "12"][:extra]  # trailing lines are ignored (the official files have some)
    return lines


JUNK = ["", " ", "nan,1", "1,inf", "-inf,2", "1e999,3", "1,2,3", "1", ",", "1,", ",2", "1;2", "1 2", "１,２",
        "١,٢", "1_0,2", "0x10,2", "1,2\x00", "\x00", "1，2", "１.5,2", "1e,2", "e5,1", ".,1", "--1,2", "1.2.3,4",
        "∞,1", "\u00a01,2", "1,2\f", "1\u2028,2", "\ufeff1,2", "NaN,NaN", "infinity,1", "1,2 # comment", "'1','2'",
        '"1","2"', "1e-400,2", "+.5,-.5", "5.,6.", "99999,1", "-0.6,1", "49.5,39.5", "49.51,1", "0,-0.5"]


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
        data = "\n".join(lines).encode()
        if op == 6:
            data = flip_bytes(data, rng)
        elif op == 7:
            data = data[: int(rng.integers(0, len(data) + 1))]
        yield f"mutated#{i}(op {op})", data
    for i in range(10):
        yield f"random_bytes#{i}", random_bytes(rng, int(rng.integers(0, 400)))
    yield "long_random_line", ("x" * 1_000_000).encode()


def test_fuzz_read_annotation(tmp_path):
    rng = np.random.default_rng(SEED + 1)
    failures = Failures()
    cases = list(annotation_cases(rng))
    for i, (case, data) in enumerate(cases):
        path = tmp_path / f"{i:04d}.txt"
        path.write_bytes(data)
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


# ---- the own-dataset CSV -----------------------------------------------------------------------------------------

CSV_WH = (20, 16)
CSV_HEADER = "image,a_x,a_y,b_x,b_y"
CSV_IMAGES = ["i0.png", "d/i1.png", "i2.png"]


def reference_custom(data: bytes, root: Path):
    """Simple parser of the documented CSV format, for files without quotes and with the original header:
    ({image: (K, 2)}, None) when valid, (None, line) when not, or "skip" when this parser does not decide."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
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
            if not re.fullmatch(_REF_NUMBER, cell) or not math.isfinite(float(cell)):
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
        data = "\n".join(lines).encode()
        if op == 8:
            data = flip_bytes(data, rng)
        elif op == 9:
            data = data[: int(rng.integers(0, len(data) + 1))]
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


# ---- the ISBI reader on a tiny fake tree ---------------------------------------------------------------------

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


# ==== bit depths and garbage models (issue items 3 and 4) ==========================================================
# Everything from here to the end of the block belongs together; other additions go below it.

def reference_sixteen_bit(values: np.ndarray, sbit: int | None) -> np.ndarray:
    """Independent reading of the documented 16-bit policy: v · 255 / (2^b − 1) with b the sBIT depth when every
    value fits it, 16 when not, and without sBIT the first of 8, 10, 12, 14, 16 bits that holds the maximum."""
    top = int(values.max())
    if sbit is not None:
        bits = sbit if top <= 2**sbit - 1 else 16
    else:
        bits = 8
        while top > 2**bits - 1:
            bits += 2
    return np.floor(values.astype(np.float64) * 255.0 / (2**bits - 1) + 0.5).astype(np.uint8)


def bit_depth_cases(rng):
    """(case, suffix, 16-bit values, sBIT or None, the 8-bit picture they must decode to or None)."""
    for i in range(60):
        bits = int(rng.integers(1, 17))
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        top = int(rng.integers(0, 2**bits))
        values = rng.integers(0, top + 1, (h, w)).astype(np.uint16)
        values.flat[int(rng.integers(0, values.size))] = top
        sbit = bits if i % 3 == 0 else None
        if i % 6 == 3 and bits < 16:  # as the PNG standard lays sBIT data out: scaled up to 16 bits
            values = (values << (16 - bits)).astype(np.uint16)
            sbit = bits
        suffix = ".png" if sbit is not None or i % 2 else ".tif"
        yield f"random#{i}({bits} bits, sbit {sbit}){suffix}", suffix, values, sbit, None
    for i in range(24):  # the same picture at every depth it may arrive in: one 8-bit image
        picture = rng.integers(0, 256, (int(rng.integers(2, 25)), int(rng.integers(2, 25)))).astype(np.uint8)
        picture.flat[0] = 255
        bits = [8, 10, 12, 14, 16][i % 5] if i % 2 else int(rng.integers(8, 17))
        sbit = None if bits in (8, 10, 12, 14, 16) and i % 4 == 1 else bits
        values = np.rint(picture * ((2**bits - 1) / 255)).astype(np.uint16)
        yield f"picture#{i}({bits} bits, sbit {sbit})", (".png" if sbit else ".tif"), values, sbit, picture


def save_sixteen(path: Path, values: np.ndarray, sbit: int | None) -> Path:
    info = None
    if sbit is not None:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(values).save(path, **({"pnginfo": info} if info else {}))
    return path


def test_fuzz_bit_depths(tmp_path):
    rng = np.random.default_rng(SEED + 4)
    failures = Failures()
    cases = list(bit_depth_cases(rng))
    for i, (case, suffix, values, sbit, picture) in enumerate(cases):
        path = save_sixteen(tmp_path / f"{i:03d}{suffix}", values, sbit)
        outcome, decoded = failures.run(case, read_grayscale, path)
        if outcome != "ok":
            failures.check(case, outcome == "crash", f"valid file refused: {decoded}")
            continue
        expected = reference_sixteen_bit(values, sbit)
        failures.check(case, np.array_equal(decoded, expected), f"decoded max {decoded.max()}, expected "
                                                                f"{expected.max()}")
        if picture is not None:
            failures.check(case, np.array_equal(decoded, picture), "the picture's 8-bit version differs")
    failures.report()
    assert len(cases) >= 80


def garbage_model_cases(rng):
    """(case, network, meta changes, what must happen: "ok" or words the error must contain)."""
    import torch

    from test_predict import TinyNet

    for i in range(30):
        torch.manual_seed(i)
        net = TinyNet(2)
        state = net.state_dict()
        names = [n for n, t in state.items() if t.is_floating_point()]
        name = names[int(rng.integers(0, len(names)))]
        bad = [float("nan"), float("inf"), -float("inf"), 1e38][i % 4]
        with torch.no_grad():
            if i % 5 == 4:  # as the quick profile stores weights
                state[name].copy_(state[name].to(torch.bfloat16).float())
            state[name].view(-1)[int(rng.integers(0, state[name].numel()))] = bad
        yield f"weights#{i}({name}={bad})", net, {}, "ok" if bad == 1e38 else "NaN or infinite"
    for i, (key, value, words) in enumerate([
            ("input_hw", [0, 32], "input_hw"), ("input_hw", [32.0, 32], "input_hw"), ("input_hw", "32", "input_hw"),
            ("num_landmarks", 0, "num_landmarks"), ("num_landmarks", True, "num_landmarks"),
            ("num_landmarks", 3, "landmark names"), ("landmark_names", ["a"], "landmark names"),
            ("params", {"model": {"backbone": 5}}, "params.model"), ("input_hw", [64, 32], "ok")]):
        yield f"meta#{i}({key}={value!r})", TinyNet(2), {key: value}, words


def test_fuzz_garbage_models(tmp_path, monkeypatch):
    from test_predict import TinyNet, write_model

    from farnet.commands import predict
    from farnet.models import trained as trained_module

    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))
    failures = Failures()
    rng = np.random.default_rng(SEED + 5)
    cases = list(garbage_model_cases(rng))
    for i, (case, net, meta, must) in enumerate(cases):
        path = write_model(tmp_path / f"model{i:02d}.pt", k=2, net=net, **{"input_hw": (32, 32), **meta})
        outcome, value = failures.run(case, predict.load_trained_model, path)
        if must == "ok":
            failures.check(case, outcome == "ok", f"good model refused: {value}")
        elif outcome != "crash":
            failures.check(case, outcome == "error", "garbage model loaded")
            failures.check(case, outcome != "error" or (str(path) in str(value) and must in str(value)),
                           f"error does not name the file and say {must!r}: {value}")
    failures.report()
    assert len(cases) >= 35


def degenerate_images(rng):
    """(case, uint8 image, flat?): flat, tiny, one-pixel and extremely elongated images, and random ones."""
    for h, w in [(1, 1), (1, 2), (2, 1), (1, 5000), (5000, 1), (3, 700), (64, 64), (17, 5)]:
        value = int(rng.integers(0, 256))
        yield f"flat {w}x{h} of {value}", np.full((h, w), value, np.uint8), True
        yield f"random {w}x{h}", rng.integers(0, 256, (h, w)).astype(np.uint8), False


def test_fuzz_degenerate_images_get_landmarks_and_a_word(tmp_path, monkeypatch):
    from test_predict import StructureNet, write_model

    from farnet.commands import predict
    from farnet.models import trained as trained_module

    monkeypatch.setattr(trained_module, "build_model", lambda params, k: StructureNet(k))
    trained = predict.load_trained_model(write_model(tmp_path / "m.pt", k=3, input_hw=(32, 64), net=StructureNet(3)))
    failures = Failures()
    rng = np.random.default_rng(SEED + 6)
    cases = list(degenerate_images(rng))
    for i, (case, image, flat) in enumerate(cases):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(image).save(path)
        outcome, value = failures.run(case, lambda p: list(predict.predict_images(trained, [p], progress=False)),
                                      path)
        if outcome != "ok":
            failures.check(case, outcome == "crash", f"refused: {value}")
            continue
        [pred] = value
        h, w = image.shape
        xy = pred.landmarks_px
        failures.check(case, xy.shape == (3, 2) and np.all(np.isfinite(xy)) and np.all(xy >= -0.5)
                       and np.all(xy <= [w - 0.5, h - 0.5]), f"landmarks {xy.tolist()} outside {w}x{h}")
        failures.check(case, pred.confidence.shape == (3,), f"confidence {pred.confidence}")
        low = any(text.startswith("low confidence") for text in pred.warnings)
        failures.check(case, low == bool(np.any(pred.confidence < predict.MIN_CONFIDENCE)),
                       f"warnings {pred.warnings} disagree with confidence {pred.confidence}")
        failures.check(case, not flat or low, "a flat image without a low-confidence warning")
        stretched = not 0.5 <= (w / h) / (64 / 32) <= 2
        failures.check(case, stretched == any(text.startswith("the image is") for text in pred.warnings),
                       f"aspect-ratio warning wrong for {w}x{h}: {pred.warnings}")
    failures.report()
    assert len(cases) >= 16

# ==== end of the bit-depth and garbage-model block ================================================================


# ==== config values and params files (issue items 1 and 2) =========================================================
# Everything from here to the end of the block belongs together; other additions go below it.

def _in(lo, hi, *, lo_open=False):
    return lambda v: (lo < v if lo_open else lo <= v) and v <= hi


# An independent statement of each numeric key's documented range: (kind, predicate). "int" takes only integers,
# "float" any finite number, "int?" an integer or null. The run `r` and the base train on isbi2015 (one fold).
CONFIG_RANGES = {
    "seed": ("int", _in(0, 2**32 - 1)),
    "datasets.isbi2015.split_seed": ("int", _in(0, 2**32 - 1)),
    "data.fold": ("int", lambda v: v == 1),
    "data.train_limit": ("int?", lambda v: v > 0),
    "heatmap.sigma_px": ("float", _in(0.5, 100)),
    "loss.alpha": ("float", lambda v: v >= 1),
    "loss.awing_omega": ("float", lambda v: v > 0),
    "loss.awing_theta": ("float", lambda v: v > 0),
    "loss.awing_epsilon": ("float", lambda v: v > 0),
    "loss.awing_alpha": ("float", lambda v: v > 1),
    "model.fr_input_kernel": ("int", lambda v: v in (1, 3, 5, 7)),
    "train.lr": ("float", _in(0, 1, lo_open=True)),
    "train.lr_gamma": ("float", _in(0, 1, lo_open=True)),
    "train.epochs": ("int", lambda v: v > 0),
    "train.batch_size": ("int", lambda v: v > 0),
    "train.num_workers": ("int", lambda v: v >= 0),
    "train.checkpoint_every": ("int", lambda v: v > 0),
    "eval.batch_size": ("int", lambda v: v > 0),
}
CONFIG_VALUES = [0, 1, -1, 2, 3, 7, 99, 2**31, 2**32 - 1, 2**32, 10**23, -(10**23), 0.0, -0.0, 0.1, 0.5, 1.0, 1.5,
                 40.0, 100.0, 100.5, 1e-300, 1e300, math.inf, -math.inf, math.nan, "1e-4", "x", None, True, False,
                 [], {}, [1]]


def reference_config_value(key, value):
    """Whether the documented range accepts ``value`` for ``key``."""
    kind, ok = CONFIG_RANGES[key]
    if value is None:
        return kind == "int?"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind in ("int", "int?"):
        return isinstance(value, int) and ok(value)
    return math.isfinite(value) and ok(float(value))


def config_with(key, value, place):
    """A tiny params mapping with ``key`` set to ``value`` in the base, in run `r` or in profile `p`."""
    raw = {"runs": {"r": {"dataset": "isbi2015"}}, "profiles": {"p": {}}}
    section = {"base": raw, "run": raw["runs"]["r"], "profile": raw["profiles"]["p"]}[place]
    *parents, leaf = key.split(".")
    for part in parents:
        section = section.setdefault(part, {})
    section[leaf] = value
    return raw


def load_config(raw):
    """What load_params does after reading the file: the run `r` as asked for, then every run under every
    profile."""
    from farnet.config import check_every_run, params_from_dict

    params = params_from_dict(raw, run="r")
    check_every_run(raw)
    return params


def test_fuzz_config_values():
    failures = Failures()
    cases = 0
    for i, (key, value) in enumerate((k, v) for k in CONFIG_RANGES for v in CONFIG_VALUES):
        place = ("base", "run", "profile")[i % 3]
        case = f"{key}={value!r} in {place}"
        outcome, params = failures.run(case, load_config, config_with(key, value, place))
        cases += 1
        if outcome == "crash":
            continue
        if reference_config_value(key, value):
            failures.check(case, outcome == "ok", f"valid value refused: {params}")
            if outcome == "ok" and place != "profile":  # profile p is not the selected one
                loaded = params
                for part in key.replace("datasets.isbi2015", "dataset").split("."):
                    loaded = getattr(loaded, part)
                expected = float(value) if CONFIG_RANGES[key][0] == "float" else value
                failures.check(case, loaded == expected and type(loaded) is type(expected), f"loaded as {loaded!r}")
        else:
            failures.check(case, outcome == "error", "invalid value accepted")
            if outcome == "error":
                failures.check(case, key.split(".", 1)[-1] in str(params), f"error does not name the key: {params}")
                if place == "profile":
                    failures.check(case, "profile 'p'" in str(params), f"error does not name the profile: {params}")
    failures.report()
    assert cases >= 500


def params_file_cases(rng, text):
    """(case, bytes, expected): expected "ok", "error" (naming the file), "twice" (a duplicate key), "alias", or
    "any" (may load or fail, naming the file)."""
    lines = text.splitlines()
    yield "committed", text.encode(), "ok"
    keyed = [i for i, line in enumerate(lines) if re.match(r"^ *[a-z_0-9]+: *[^ #]", line)]  # a key and its value
    for n in range(25):
        i = keyed[int(rng.integers(0, len(keyed)))]
        duplicated = lines[: i + 1] + [lines[i]] + lines[i + 1:]
        yield f"duplicate line {i + 1} #{n}", "\n".join(duplicated).encode(), "twice"
    for n in range(10):
        i = keyed[int(rng.integers(0, len(keyed)))]
        anchored = lines.copy()
        anchored[i] = anchored[i].replace(":", ": &x", 1)
        yield f"anchor on line {i + 1} #{n}", "\n".join(anchored).encode(), "alias"
    for n in range(20):
        yield f"flips#{n}", flip_bytes(text.encode(), rng), "any"
    for n in range(10):
        cut = int(rng.integers(0, len(text)))
        yield f"truncated@{cut}", text.encode()[:cut], "any"
    yield "deep flow", b"a: " + b"[" * 3000 + b"]" * 3000 + b"\n", "error"  # deeper than Python's recursion limit
    yield "deep block", "".join(f"{' ' * i}k{i}:\n" for i in range(3000)).encode(), "error"
    yield "laughs", ("a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 12))).encode(), "alias"
    yield "empty", b"", "error"
    yield "list", b"- 1\n- 2\n", "error"
    yield "utf16", text.encode("utf-16"), "ok"
    yield "latin1 junk", b"seed: \xff\xfe0\n", "error"
    for n in range(5):
        yield f"random_bytes#{n}", random_bytes(rng, int(rng.integers(1, 2000))), "any"


def test_fuzz_params_files(tmp_path):
    from farnet.config import load_params
    from helpers import committed_params_text

    rng = np.random.default_rng(SEED + 10)
    failures = Failures()
    cases = list(params_file_cases(rng, committed_params_text()))
    for i, (case, data, expected) in enumerate(cases):
        path = tmp_path / f"params{i}.yaml"
        path.write_bytes(data)
        outcome, value = failures.run(case, load_params, path)
        if outcome == "crash":
            continue
        if outcome == "error":
            failures.check(case, str(path) in str(value), f"error does not name the file: {value}")
        if expected == "ok":
            failures.check(case, outcome == "ok", f"valid file refused: {value}")
        elif expected != "any":
            failures.check(case, outcome == "error", "loaded a file that must fail")
            if outcome == "error" and expected == "twice":
                line = int(case.split()[2]) + 1  # the copy, one line below the original
                failures.check(case, f"{path}:{line}: " in str(value) and "given twice" in str(value), f"{value}")
            if outcome == "error" and expected == "alias":
                failures.check(case, "anchors and aliases" in str(value), f"{value}")
    failures.report()
    assert len(cases) >= 70

# ==== end of the config values and params files block =============================================================


# ---- archives extracted into a folder that already holds links ----------------------------------------------

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
    from farnet.data.download import safe_extract

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


# ---- the committed manifests: their reader, and a mirror checked against one ----------------------------------

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
    names = ["README.txt", "data/a 1.jpg", "labels/a 1.jpg.mat", "setup/cv/set1/train.txt", "images/3001.png"]
    return [f"{hashlib.sha256(bytes([i]) + bytes(rng.integers(0, 256, 4, dtype=np.uint8))).hexdigest()}  {n}"
            for i, n in enumerate(names)]


def manifest_cases(rng):
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
        data = "\n".join(lines).encode()
        if op == 3:
            data = flip_bytes(data, rng)
        elif op == 4:
            data = data[: int(rng.integers(0, len(data) + 1))]
        elif op == 5:
            data = data.replace(b"\n", [b"\r\n", b"\r", b"\n\n", b"\x0b"][int(rng.integers(0, 4))])
        yield f"mutated#{i}(op {op})", data
    yield "random_bytes", random_bytes(rng, 500)
    yield "long_line", b"0" * 64 + b"  " + b"a" * 200_000


def test_fuzz_manifest_reader(tmp_path):
    from farnet.data.manifest import Manifest

    rng = np.random.default_rng(SEED + 5)
    failures = Failures()
    cases = list(manifest_cases(rng))
    for i, (case, data) in enumerate(cases):
        path = tmp_path / f"{i:04d}.sha256"
        path.write_bytes(data)
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
