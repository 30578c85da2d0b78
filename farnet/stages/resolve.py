"""The resolve stage: every stage's own parameters, one file each (:func:`farnet.config.stage_params`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import yaml

from farnet.config import Params, load_params, params_from_dict, profile_chain, read_params_file, stage_params
from farnet.config.shadowed import shadowed_edits
from farnet.core.errors import ConfigError
from farnet.core.fileio import write_text
from farnet.core.provenance import committed_text


def resolve(params_path: Path, out: Path) -> list[Path]:
    """Write each stage's own resolved parameters (:func:`farnet.config.stage_params`): ``out/<run>/train.json``
    and ``out/<run>/evaluate.json`` for every run, ``out/datasets/<name>.json`` for every dataset.

    Every run under every profile is validated (:func:`~farnet.config.load_params`) before any file is written.
    Files of runs no longer in the params are removed, and a file whose content is unchanged is not rewritten.
    Each file names the profile its values come from (:func:`_own_profile`), so switching to a profile that
    extends another (``cpu`` extends ``quick``) re-runs only the stages whose values it changes.
    """
    base = load_params(params_path)
    raw = read_params_file(params_path)
    _refuse_shadowed_edits(params_path, raw)
    wanted: dict[Path, dict] = {}
    for name in base.datasets:
        wanted[out / "datasets" / f"{name}.json"] = _own_profile(raw, None, lambda p: stage_params(p, "prepare", name))
    for run in base.runs:  # valid: load_params resolved every run under every profile
        for stage in ("train", "evaluate"):
            wanted[out / run / f"{stage}.json"] = _own_profile(raw, run, lambda p: stage_params(p, stage))
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


def _refuse_shadowed_edits(params_path: Path, raw: dict) -> None:
    """ConfigError when a value changed since the last commit (by hand or ``dvc exp run -S``) is one the selected
    profile sets again: the run would be recorded as made with the user's value and run with the profile's."""
    text = committed_text(params_path)
    if text is None:  # no git, or a params file git does not track: nothing to compare with
        return
    try:
        before = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    edits = shadowed_edits(raw, before if isinstance(before, dict) else {})
    if edits:
        raise ConfigError(f"{params_path}: under profile {raw.get('profile')!r}, " + "; ".join(edits) + ". Set the "
                          "profile's key instead (e.g. -S profiles.<profile>.<key>=...), or use profile paper")


def _own_profile(raw: dict, run: str | None, values: Callable[[Params], dict]) -> dict:
    """``values`` of the selected profile, labelled with the first profile up its ``extends`` chain that gives
    the same values: under ``cpu`` (``quick`` with a longer ``farnet`` run) every other run is labelled, and
    trained, as the quick run it is; under ``study`` (``cpu`` and more) ``farnet`` is the cpu run and Table 1's
    rows the quick ones."""
    selected = raw.get("profile", "paper")
    content = values(params_from_dict(raw, run))
    if selected == "paper":
        return content
    names = [name for name, _ in profile_chain(raw.get("profiles") or {}, selected)]
    for ancestor in reversed(names[:-1]):  # the nearest first
        other = values(params_from_dict({**raw, "profile": ancestor}, run))
        if {**other, "profile": None} != {**content, "profile": None}:  # the values, whatever their label
            break
        content = other
    return content
