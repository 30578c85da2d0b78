"""Fuzzing the readers: hundreds of corrupted images and annotation files, seeded.

Every case must either load correctly or raise :class:`farnet.errors.FarnetError`: never another exception, never
a hang (each case has a time budget, enforced by SIGALRM), never a silently wrong value. "Correctly" is checked
against independent, deliberately simple reference parsers: a valid annotation file must load to exactly what was
written, an invalid one must fail on the line the reference names; a truncated image must fail or decode to the
original pixels.
"""

import io
import json
import math
import re
import signal
import struct
import time
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from farnet.data.custom import read_custom
from farnet.data.imageio import read_grayscale, read_image_size
from farnet.data.isbi import read_annotation, read_isbi2015
from farnet.errors import DataError, FarnetError

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
