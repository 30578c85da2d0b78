"""Profiles: named sets of overrides merged over the base of ``params.yaml`` (``profile: quick``).

A profile is a mapping shaped like the file itself (``train: {epochs: 1}``, ``runs: {vgg16: {...}}``) plus two
keys of its own:

- ``extends: <profile>``: that profile's overrides are merged first (``cpu`` is ``quick`` with a longer
  ``farnet`` run); ``paper`` names the base itself.
- ``run_defaults: {<dataset>: {...}}``: overrides merged into every run of that dataset, over the run's own entry
  in the base and under the run's entry in this profile's ``runs``; ``exempt: [<run>, ...]`` lists the runs of the
  dataset they skip. The quick profile states its reduced ISBI runs once this way rather than once per run, in
  plain keys that ``dvc exp run -S profiles.quick.run_defaults.isbi2015.data.train_limit=20`` can set.
- ``trained_like: {<run>: {runs: [<run>, ...], with: {...}}}``: each listed run is trained like the named one:
  its own top-level entry (what it is: model, loss, seed), then the named run's entries in the profiles before
  this one (its recipe), then ``with``, then this profile's own entry for it; what earlier profiles gave the
  listed run is replaced. The ``study`` profile trains Table 2's rows like the cpu ``farnet`` run this way, so
  the recipe has one home.
"""

from __future__ import annotations

import copy
from typing import Any

from farnet.config.checks import check_finite
from farnet.config.sections import Params
from farnet.config.typed import build
from farnet.core.errors import ConfigError
from farnet.data.registry import DATASETS

__all__ = ["RUN_KEYS_FIXED", "apply_profile", "merge", "profile_chain"]

RUN_KEYS_FIXED = ("run", "runs", "profile")  # what a run's overrides may not set: they say which run this is
_NOT_DEFAULTS = ("dataset", *RUN_KEYS_FIXED)  # nor run defaults, which may not move a run to another dataset


def profile_chain(profiles: dict[str, Any], profile: Any) -> list[tuple[str, dict]]:
    """The overrides a profile applies, base first: each profile its ``extends`` names comes before it.

    Raises:
        ConfigError: a profile that is not defined or not a mapping, or a cycle of ``extends``.
    """
    chain: list[tuple[str, dict]] = []
    while True:
        if profile not in profiles:
            raise ConfigError(f"profile: {profile!r} is not defined under profiles (have: {sorted(profiles)})")
        entry = profiles[profile]
        if not isinstance(entry, dict):
            raise ConfigError(f"profiles.{profile}: expected a mapping")
        entry = dict(entry)
        parent = entry.pop("extends", None)
        chain.insert(0, (str(profile), entry))
        if parent is None or parent == "paper":  # "paper" is the base itself
            return chain
        if any(name == parent for name, _ in chain):
            raise ConfigError(f"profiles.{profile}.extends: {parent!r} makes a cycle of profiles")
        profile = parent


def apply_profile(raw: dict[str, Any], profiles: dict[str, Any], profile: Any) -> dict[str, Any]:
    """``raw`` (the base, without ``profiles``) with the overrides of ``profile`` and those it extends merged
    over it, each profile's ``run_defaults`` folded into its runs first."""
    base_runs = copy.deepcopy(raw.get("runs"))
    base_runs = base_runs if isinstance(base_runs, dict) else {}
    earlier: dict[str, dict] = {}  # each run's entries in the profiles applied so far (what trained_like copies)
    for name, overrides in profile_chain(profiles, profile):
        where = f"profiles.{name}"
        _refuse_new_runs(overrides.get("runs"), raw.get("runs"), where)
        if "run_defaults" in overrides:
            overrides = _with_run_defaults(overrides, raw.get("runs"), where)
        overrides = dict(overrides)
        like = overrides.pop("trained_like", None)
        raw = merge(raw, overrides, where)
        if like is not None:
            raw["runs"] = {**raw["runs"], **_trained_like(like, base_runs, earlier, overrides.get("runs") or {}, where)}
        for run, entry in (overrides.get("runs") or {}).items():
            earlier[run] = merge(earlier.get(run, {}), entry, f"{where}.runs.{run}")
    return raw


def _trained_like(like: Any, base_runs: dict, earlier: dict[str, dict], own: dict, where: str) -> dict[str, dict]:
    """The entries of the runs a profile's ``trained_like`` lists (see the module's docstring).

    Raises:
        ConfigError: ``trained_like`` is not a mapping of a run to ``{runs: [...], with: {...}}``, or names a run
            that is not defined or trains on another dataset than its source.
    """
    key = f"{where}.trained_like"
    if not isinstance(like, dict):
        raise ConfigError(f"{key}: expected a mapping of a run to {{runs: [the runs trained like it], with: {{...}}}}")
    entries = {}
    for source, spec in like.items():
        if source not in base_runs:
            raise ConfigError(f"{key}.{source}: run {source!r} is not defined under the top-level runs")
        if not isinstance(spec, dict) or set(spec) - {"runs", "with"}:
            raise ConfigError(f"{key}.{source}: expected {{runs: [...], with: {{...}}}}, got {spec!r}")
        targets, changes = spec.get("runs"), spec.get("with") or {}
        if not isinstance(targets, list) or not all(isinstance(t, str) and t in base_runs for t in targets):
            raise ConfigError(f"{key}.{source}.runs: {targets!r} must be a list of runs defined under the top-level "
                              "runs")
        for target in targets:
            if base_runs[target].get("dataset") != base_runs[source].get("dataset"):
                raise ConfigError(f"{key}.{source}.runs: run {target!r} trains on "
                                  f"{base_runs[target].get('dataset')!r}, not {base_runs[source].get('dataset')!r} "
                                  f"like {source!r}")
            entry = merge(copy.deepcopy(base_runs[target]), copy.deepcopy(earlier.get(source, {})), f"{key}.{source}")
            entry = merge(entry, copy.deepcopy(changes), f"{key}.{source}.with")
            entries[target] = merge(entry, own.get(target) or {}, f"{where}.runs.{target}")
    return entries


def _refuse_new_runs(own: Any, base_runs: Any, where: str) -> None:
    """ConfigError for a run a profile names that the top-level ``runs`` does not define: dvc.yaml makes one
    train and evaluate stage per top-level run (``foreach: ${runs}``), so such a run would never train."""
    if not isinstance(own, dict):
        return  # named by the merge
    defined = base_runs if isinstance(base_runs, dict) else {}
    for run in own:
        if run not in defined:
            raise ConfigError(f"{where}.runs.{run}: run {run!r} is not defined under the top-level runs, so it has no "
                              "DVC stage and would never train (dvc.yaml: foreach ${runs}); define it under runs "
                              "and override it here")


def merge(base: dict, override: Any, where: str) -> dict:
    """``base`` with ``override`` merged into it, mapping into mapping; any other value replaces.

    Raises:
        ConfigError: naming ``where`` when ``override`` is not a mapping.
    """
    if not isinstance(override, dict):
        raise ConfigError(f"{where}: expected a mapping")
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged


def _with_run_defaults(overrides: dict, base_runs: Any, where: str) -> dict:
    """A profile's overrides with its ``run_defaults`` folded into its ``runs``: for every run of a listed
    dataset but the exempt ones, the dataset's defaults under the profile's own entry for that run."""
    overrides = dict(overrides)
    defaults = overrides.pop("run_defaults")
    own = overrides.get("runs") or {}
    if not isinstance(own, dict):
        raise ConfigError(f"{where}.runs: expected a mapping of run name to overrides")
    datasets = _run_datasets(base_runs if isinstance(base_runs, dict) else {}, own)
    runs = dict(own)
    for dataset, (values, exempt) in _checked_run_defaults(defaults, datasets, f"{where}.run_defaults").items():
        for run in sorted(run for run, name in datasets.items() if name == dataset and run not in exempt):
            runs[run] = merge(copy.deepcopy(values), own[run] if run in own else {}, f"{where}.runs.{run}")
    overrides["runs"] = runs
    return overrides


def _run_datasets(base_runs: dict, own: dict) -> dict[str, Any]:
    """Run name -> the dataset it trains on, the profile's entry first (a malformed run is left to the run's
    own check)."""
    datasets = {}
    for run in {**base_runs, **own}:
        entries = [e for e in (own.get(run), base_runs.get(run)) if isinstance(e, dict) and "dataset" in e]
        if entries:
            datasets[run] = entries[0]["dataset"]
    return datasets


def _checked_run_defaults(defaults: Any, datasets: dict[str, Any], where: str) -> dict[str, tuple[dict, set]]:
    """Dataset -> (its run defaults, the exempt runs), each checked.

    Raises:
        ConfigError: naming the key: not a mapping, a dataset not in the registry, an ``exempt`` that is not a
            list of that dataset's runs, a key fixed per run, or a key, type or number no run could take.
    """
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where}: expected a mapping of dataset name to the overrides of its runs")
    checked = {}
    for dataset, entry in defaults.items():
        key = f"{where}.{dataset}"
        if dataset not in DATASETS:
            raise ConfigError(f"{key}: {dataset!r} is not a dataset (have: {', '.join(DATASETS)})")
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: expected a mapping of overrides, got {entry!r}")
        values = dict(entry)
        exempt = values.pop("exempt", [])
        runs = sorted(run for run, name in datasets.items() if name == dataset)
        if not isinstance(exempt, list) or not all(run in runs for run in exempt):
            raise ConfigError(f"{key}.exempt: {exempt!r} must be a list of runs of {dataset} "
                              f"(have: {', '.join(runs)})")
        fixed = [name for name in _NOT_DEFAULTS if name in values]
        if fixed:
            raise ConfigError(f"{key}.{fixed[0]}: may not be set for every run of a dataset")
        build(Params, values, key + ".")  # an unknown key or a wrong type, named where it is written
        check_finite(values, key + ".")
        checked[dataset] = (values, set(exempt))
    return checked
