"""glibc malloc settings that keep PyTorch's CPU tensors out of ``mmap``/``munmap`` churn.

PyTorch's CPU allocator is the C library's ``malloc``. With glibc's defaults every activation above the dynamic
mmap threshold (at most 32 MiB) gets fresh pages from the kernel and gives them back when freed, so each training
step pays page faults on gigabytes of memory: on the project's 2-core CPU a quick-profile step spent as long in
the kernel as in the convolutions. Serving those blocks from the heap and keeping freed memory for the next step
halves the quick profile's training time and leaves the numbers bit-for-bit the same (``farnet bench`` measures
it; docs/speed.md has the figures). The price is a resident size that stays at its peak.

glibc reads these settings (``GLIBC_TUNABLES``) only when a process starts, so the entry points (the DVC stage
scripts and the ``farnet`` command) call :func:`tune_malloc` first: it re-executes the same command once with
the settings added. It does nothing on other C libraries, when ``GLIBC_TUNABLES`` already sets malloc options
(the user's choice wins), or when ``FARNET_TUNE_MALLOC=0``.
"""

from __future__ import annotations

import os
import platform
import sys

#: mmap only above 1 GiB, return freed heap to the kernel only above 4 GiB, grow the heap 256 MiB at a time.
MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
                   ":glibc.malloc.top_pad=268435456")
OPT_OUT = "FARNET_TUNE_MALLOC"


def tunables(environ: dict[str, str] | None = None, libc: str | None = None) -> str | None:
    """The ``GLIBC_TUNABLES`` value to run with, or None when nothing should change."""
    environ = os.environ if environ is None else environ
    libc = platform.libc_ver()[0] if libc is None else libc
    current = environ.get("GLIBC_TUNABLES", "")
    if libc != "glibc" or environ.get(OPT_OUT, "1") == "0" or "glibc.malloc." in current:
        return None
    return f"{current}:{MALLOC_TUNABLES}" if current else MALLOC_TUNABLES


def tune_malloc() -> None:
    """Re-execute this process once with :data:`MALLOC_TUNABLES` (see the module docstring); else return."""
    value = tunables()
    if value is None:
        return
    os.environ["GLIBC_TUNABLES"] = value  # also marks the re-executed process: tunables() is None there
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def malloc_setting() -> str:
    """How this process's malloc is set up, for benchmark and provenance records."""
    value = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in value:
        return "tuned (GLIBC_TUNABLES=" + value + ")"
    return "C library defaults"
