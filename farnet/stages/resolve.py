"""The resolve stage: every stage's own parameters, one file each (:func:`farnet.config.stage_params`)."""

from __future__ import annotations

import json
from pathlib import Path

from farnet.config import load_params, params_from_dict, read_params_file, stage_params
from farnet.fileio import write_text


def resolve(params_path: Path, out: Path) -> list[Path]:
    """Write each stage's own resolved parameters (:func:`farnet.config.stage_params`): ``out/<run>/train.json``
    and ``out/<run>/evaluate.json`` for every run, ``out/datasets/<name>.json`` for every dataset.

    Every run under every profile is validated (:func:`~farnet.config.load_params`) before any file is written.
    Files of runs no longer in the params are removed, and a file whose content is unchanged is not rewritten.
    """
    base = load_params(params_path)
    raw = read_params_file(params_path)
    wanted: dict[Path, dict] = {}
    for name in base.datasets:
        wanted[out / "datasets" / f"{name}.json"] = stage_params(base, "prepare", name)
    for run in base.runs:
        params = params_from_dict(raw, run)  # valid: load_params resolved it
        for stage in ("train", "evaluate"):
            wanted[out / run / f"{stage}.json"] = stage_params(params, stage)
    for old in sorted(out.rglob("*.json")) if out.is_dir() else []:
        if old not in wanted:
            old.unlink()
    for path, content in wanted.items():
        text = json.dumps(content, indent=2, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text() != text:
            write_text(path, text)
    for folder in sorted(out.iterdir()) if out.is_dir() else []:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return sorted(wanted)
