"""The fuzz tests' shared harness: a per-case time budget, a failure collector, byte mutations and valid inputs.

Every fuzz case must either load correctly or raise :class:`farnet.core.errors.FarnetError`: never another
exception, never a hang (each case has a time budget, enforced by SIGALRM), never a silently wrong value.
"Correctly" is checked, in each ``test_fuzz_<subject>.py``, against independent, deliberately simple reference
parsers. The harness collects every failing case, so one run reports them all rather than the first.
"""

import io
import signal
import struct
import time
import zlib
from contextlib import contextmanager

import numpy as np
from PIL import Image

from farnet.core.errors import FarnetError

SEED = 20150419
CASE_BUDGET_S = 3.0  # per case; generous for a busy 2-core machine, tiny for the work a case does


class CaseTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that no reader's ``except Exception`` can swallow it."""


@contextmanager
def time_budget(seconds):
    """Raise :class:`CaseTimeout` in the block once ``seconds`` of wall time have passed."""
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
    """The failing cases of one fuzz test, as "case: what went wrong" lines, asserted empty at the end."""

    def check(self, case, condition, detail=""):
        """Record ``case`` as failing with ``detail`` unless ``condition`` holds."""
        if not condition:
            self.append(f"{case}: {detail}")

    def run(self, case, fn, *args, **kwargs):
        """:func:`attempt` the call; a crash or a hang is recorded and returned as ("crash", None)."""
        try:
            return attempt(fn, *args, **kwargs)
        except CaseTimeout as err:
            self.append(f"{case}: HANG ({err})")
        except Exception as err:  # noqa: BLE001 - exactly what the fuzz test looks for
            self.append(f"{case}: {type(err).__name__}: {err}"[:300])
        return ("crash", None)

    def report(self):
        """Fail the test listing the first 30 failing cases, if any."""
        assert not self, f"{len(self)} failing cases:\n" + "\n".join(self[:30])


# ---- mutations of bytes ----------------------------------------------------------------------------------------

def flip_bytes(data: bytes, rng, n=None) -> bytes:
    """``data`` with ``n`` (default 1-8) random bytes XOR-ed with a non-zero value."""
    out = bytearray(data)
    for _ in range(n or int(rng.integers(1, 9))):
        i = int(rng.integers(0, len(out)))
        out[i] ^= int(rng.integers(1, 256))
    return bytes(out)


def random_bytes(rng, n=None) -> bytes:
    """``n`` (default 1-2999) random bytes."""
    return rng.integers(0, 256, int(n if n is not None else rng.integers(1, 3000)), dtype=np.uint8).tobytes()


def spoil(data: bytes, rng, how) -> bytes:
    """``data`` with random bytes flipped (``how`` "flip"), cut to a random length ("truncate"), or as it is."""
    if how == "flip":
        return flip_bytes(data, rng)
    if how == "truncate":
        return data[: int(rng.integers(0, len(data) + 1))]
    return data


def numbered_files(folder, cases, suffix):
    """Write each (case, bytes) of ``cases`` to ``folder/NNNN<suffix>`` just before it is yielded as
    (case, bytes, path)."""
    for i, (case, data) in enumerate(cases):
        path = folder / f"{i:04d}{suffix}"
        path.write_bytes(data)
        yield case, data, path


# ---- valid images to corrupt -------------------------------------------------------------------------------------

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

    from model_files import dicom_bytes

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


# ---- landmark text: numbers as files write them, and junk -------------------------------------------------------

# A decimal number as the annotation and CSV formats document it (no hex, no underscores, no "inf" or "nan").
REF_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"

JUNK = ["", " ", "nan,1", "1,inf", "-inf,2", "1e999,3", "1,2,3", "1", ",", "1,", ",2", "1;2", "1 2", "１,２",
        "١,٢", "1_0,2", "0x10,2", "1,2\x00", "\x00", "1，2", "１.5,2", "1e,2", "e5,1", ".,1", "--1,2", "1.2.3,4",
        "∞,1", "\u00a01,2", "1,2\f", "1\u2028,2", "\ufeff1,2", "NaN,NaN", "infinity,1", "1,2 # comment", "'1','2'",
        '"1","2"', "1e-400,2", "+.5,-.5", "5.,6.", "99999,1", "-0.6,1", "49.5,39.5", "49.51,1", "0,-0.5"]


def reference_text(data: bytes):
    """The text of a landmark file as the documented formats read it: UTF-8, a leading BOM dropped; None when the
    bytes are not UTF-8."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def format_number(value, rng):
    """``value`` in one of five spellings a valid file may use (integer, fixed, exponent, padded, signed)."""
    style = int(rng.integers(0, 5))
    return [f"{value:.0f}", f"{value:.3f}", f"{value:e}", f" {value:g} ", f"+{value:.1f}"][style]
