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

A command with a wall-time limit (``farnet replicate --deadline-min``) must count the re-execution and the
imports too, so before re-executing :func:`tune_malloc` records the wall-clock start in ``FARNET_STARTED_AT``
(seconds since the epoch, kept when already set), and :func:`command_started_at` reads it back.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

#: mmap only above 1 GiB, return freed heap to the kernel only above 4 GiB, grow the heap 256 MiB at a time.
MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
                   ":glibc.malloc.top_pad=268435456")
OPT_OUT = "FARNET_TUNE_MALLOC"
#: seconds since the epoch at which the command began, set by :func:`tune_malloc` before it re-executes
STARTED_AT = "FARNET_STARTED_AT"


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
    os.environ.setdefault(STARTED_AT, repr(time.time()))  # the re-executed process counts from here
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def malloc_setting() -> str:
    """How this process's malloc is set up, for benchmark and provenance records."""
    value = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in value:
        return "tuned (GLIBC_TUNABLES=" + value + ")"
    return "C library defaults"


def command_started_at(environ: dict[str, str] | None = None, now: float | None = None) -> tuple[float, str]:
    """When this command began, in seconds since the epoch, and where that comes from.

    ``FARNET_STARTED_AT`` (set by :func:`tune_malloc` before its re-execution) when it holds a time in the last
    hour; else the process's own start (Linux ``/proc``); else now. The variable is removed from ``environ``, so
    the processes this one starts (side-by-side runs, another command) do not count from this one's start.
    """
    environ = os.environ if environ is None else environ
    now = time.time() if now is None else now
    given = environ.pop(STARTED_AT, None)
    try:
        started = float(given) if given is not None else None
    except ValueError:
        started = None
    if started is not None and 0 <= now - started <= 3600:  # a stale or foreign value would skip everything
        return started, STARTED_AT
    started = _process_start()
    if started is not None and 0 <= now - started <= 3600:
        return started, "process start (/proc)"
    return now, "now (no start recorded)"


def _process_start() -> float | None:
    """This process's start in seconds since the epoch, from ``/proc`` (None elsewhere)."""
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        # the fields after the command name (which may hold spaces); starttime is field 22 of the whole line
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, IndexError, ValueError):
        return None
