"""Atomic file writes (a temporary file beside the target, fsync, then a rename) and checked JSON reads.

An interrupted write never leaves a half-written file behind, and a failed one (a full disk) raises
:class:`~farnet.core.errors.WriteError` naming the file, keeps the old file and removes the temporary one. Every
result, checkpoint and table of the project is written through :func:`atomic_write`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from farnet.core.errors import DataError, WriteError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Call ``write(fh)`` on a binary temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(path, f"cannot write: {exc}") from exc
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON (numpy scalars and arrays, tuples and paths converted)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a DataFrame as CSV without its index, floats to 6 significant digits."""
    return write_text(path, frame.to_csv(index=False, float_format="%.6g"))


def device_slug(name: str) -> str:
    """A device's name as a file name (``results/benchmarks/<slug>.json``): ``"NVIDIA H200"`` → ``"nvidia-h200"``,
    ``"Intel(R) Xeon(R)"`` → ``"intel-xeon"``."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)", "", name.lower())).strip("-")


def read_json_object(path: str | Path, missing: str = "file not found") -> dict[str, Any]:
    """A JSON file holding an object.

    Raises:
        DataError: naming the file (and the line of a syntax error): ``missing`` when it does not exist, invalid
            JSON, or JSON that is not an object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, missing) from None
    except json.JSONDecodeError as err:
        raise DataError(path, f"invalid JSON: {err.msg}", line=err.lineno) from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
