"""Tests of farnet.core.checkpoint's clean-up of temporary files that a killed save leaves behind."""

from __future__ import annotations

import signal
import subprocess
import sys

from farnet.core.checkpoint import remove_stale_temporaries

# A save killed half-way: atomic_write (what save_atomic uses) writes some bytes, then the process gets SIGKILL,
# so no `finally` runs and the temporary file stays.
KILLED_SAVE = """
import os, signal, sys
from farnet.core.fileio import atomic_write

def write(fh):
    fh.write(b"half a checkpoint")
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(sys.argv[1], write)
"""


def test_a_killed_save_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoint.pt").write_bytes(b"the last good checkpoint")
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(state / "checkpoint.pt")], timeout=60)
    assert done.returncode == -signal.SIGKILL
    (leftover,) = state.glob("checkpoint.pt.*.tmp")
    assert leftover.read_bytes() == b"half a checkpoint"
    assert remove_stale_temporaries(state) == [leftover]
    assert sorted(p.name for p in state.iterdir()) == ["checkpoint.pt"]
    assert (state / "checkpoint.pt").read_bytes() == b"the last good checkpoint"


def test_only_atomic_write_temporaries_are_removed(tmp_path):
    stale = ["checkpoint.pt.k3j_9x0a.tmp", "best.pt.abcdefgh.tmp", "train.json.0123abcd.tmp"]
    kept = ["checkpoint.pt", "notes.tmp", "checkpoint.pt.short.tmp", "checkpoint.pt.ABCDEFGH.tmp", "x.tmp.keep",
            ".fetch.bin.123.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.pt.abcdefgh.tmp").mkdir()  # not a file
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "checkpoint.pt.abcdefgh.tmp").write_bytes(b"x")  # subfolders are not searched
    (tmp_path / "link.pt.abcdefgh.tmp").symlink_to(tmp_path / "checkpoint.pt")
    assert remove_stale_temporaries(tmp_path) == sorted(tmp_path / name for name in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        kept + ["folder.pt.abcdefgh.tmp", "sub", "link.pt.abcdefgh.tmp"])
    assert (tmp_path / "sub" / "checkpoint.pt.abcdefgh.tmp").exists()


def test_a_missing_folder_is_fine(tmp_path):
    assert remove_stale_temporaries(tmp_path / "not yet") == []
    assert remove_stale_temporaries(str(tmp_path)) == []


def test_a_full_disk_during_a_checkpoint_save_says_so(tmp_path, monkeypatch):
    """torch's zip writer turned "No space left on device" into "unexpected pos"."""
    import errno
    import io

    import pytest
    import torch

    from farnet.core import fileio
    from farnet.core.checkpoint import save_atomic
    from farnet.core.errors import WriteError

    class Full(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: Full(fd, "wb"))
    with pytest.raises(WriteError, match=r"model\.pt: cannot write: \[Errno 28\] No space left on device"):
        save_atomic({"w": torch.zeros(10_000)}, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []  # no temporary left
