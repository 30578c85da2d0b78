"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests use tiny tensors: one thread avoids oversubscribing the 2-core machines (much faster, same results).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mirror_root() -> Path:
    """The offline data mirror, ``$FARNET_DATA_MIRROR`` (holding isbi2015/, hand_dha/, spine_boostnet/).

    Tests that use it are skipped, with the reason shown, when the variable is unset or not a folder.
    """
    root = os.environ.get("FARNET_DATA_MIRROR")
    if not root:
        pytest.skip("FARNET_DATA_MIRROR not set: point it at the offline data mirror to run this test")
    if not Path(root).is_dir():
        pytest.skip(f"FARNET_DATA_MIRROR not set: {root!r} is not a folder")
    return Path(root).resolve()  # absolute: tests link to its files from temporary folders
