"""``params.yaml`` to :class:`~farnet.config.sections.Params`: the base, then the profile, then one run's overrides.

This is the one place that resolves a params file. :func:`load_params` also resolves every run under every
profile (:func:`check_every_run`), so a mistake anywhere in the file is reported before anything starts, not when
its run's turn comes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from farnet.config.checks import check_values
from farnet.config.profiles import RUN_KEYS_FIXED, apply_profile, merge, profile_chain
from farnet.config.sections import Params
from farnet.config.typed import build
from farnet.config.yaml_file import read_params_file
from farnet.core.errors import ConfigError

__all__ = ["load_params", "params_from_dict", "check_every_run"]


def load_params(path: str | Path = "params.yaml", run: str | None = None) -> Params:
    """Read a params file, apply its profile (and, given ``run``, that run's overrides) and validate every key.

    Raises:
        ConfigError: naming the file and the key: the file is missing or not a mapping, a key is unknown, a value
            has the wrong type or is not one of the allowed choices, ``profile`` names no entry of ``profiles``,
            or any run under any profile fails the same checks (:func:`check_every_run`).
    """
    raw = read_params_file(path)
    try:
        params = params_from_dict(raw, run)  # first, so an error in what was asked for reads as it is
        check_every_run(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return params


def params_from_dict(raw: dict[str, Any], run: str | None = None) -> Params:
    """Build :class:`Params` from a parsed params mapping: base, then the profile, then the run's overrides.

    A run entry is a mapping with ``dataset`` (which dataset it trains on) and any sections to override, e.g.
    ``{dataset: isbi2015, model: {backbone: vgg16}}``.
    """
    raw = copy.deepcopy(raw)
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise ConfigError("profiles: expected a mapping of profile name to overrides")
    profile = raw.get("profile", "paper")
    if profile != "paper":
        raw = apply_profile(raw, profiles, profile)
    runs = raw.get("runs") or {}
    if not isinstance(runs, dict):
        raise ConfigError("runs: expected a mapping of run name to overrides")
    for name, entry in runs.items():
        if not isinstance(entry, dict) or "dataset" not in entry:
            raise ConfigError(f"runs.{name}: expected a mapping with a `dataset` key, got {entry!r}")
    if run is not None:
        raw = _with_run(raw, runs, run)
    params = build(Params, raw, "")
    check_values(params)
    return params


def _with_run(raw: dict[str, Any], runs: dict[str, Any], run: str) -> dict[str, Any]:
    """``raw`` with the overrides of ``runs[run]`` merged over it, ``data.dataset`` set to the run's dataset."""
    if run not in runs:
        raise ConfigError(f"run {run!r} is not defined under runs (have: {', '.join(sorted(runs))})")
    overrides = copy.deepcopy(runs[run])
    dataset = overrides.pop("dataset")
    if any(key in overrides for key in RUN_KEYS_FIXED):
        raise ConfigError(f"runs.{run}: may not override run, runs or profile")
    data = overrides.get("data") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"runs.{run}.data: expected a mapping, got {data!r}")
    overrides["data"] = {**data, "dataset": dataset}
    raw = merge(raw, overrides, f"runs.{run}")
    raw["run"] = run
    return raw


def check_every_run(raw: dict[str, Any]) -> None:
    """Resolve the base and every run under every profile (``paper`` and each entry of ``profiles``), whichever
    the file selects: ``runs.vgg16.model.backbone: vgg61`` fails while training ``farnet``, not 300 epochs later.

    Raises:
        ConfigError: the first problem, prefixed with the profile and run it was found under
            (``profile 'quick': runs.vgg16: model.backbone: ...``).
    """
    profiles = raw.get("profiles") or {}
    profiles = profiles if isinstance(profiles, dict) else {}

    def depth(name: str) -> int:  # a profile after those it extends, so a mistake is named where it is written
        try:
            return len(profile_chain(profiles, name))
        except ConfigError:
            return 0  # reported when the profile itself is resolved

    names = [raw.get("profile", "paper"), "paper", *sorted(profiles, key=depth)]
    for profile in dict.fromkeys(names):  # the selected profile first
        variant = {**raw, "profile": profile}
        run = None
        try:
            for run in params_from_dict(variant).runs:  # the profile's base is resolved first (run None)
                params_from_dict(variant, run)
        except ConfigError as exc:
            message = str(exc)
            if run is not None and not message.startswith(f"runs.{run}"):
                message = f"runs.{run}: {message}"
            raise ConfigError(f"profile {profile!r}: {message}") from None
