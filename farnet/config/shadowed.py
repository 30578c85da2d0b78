"""Edits the selected profile would silently undo: a value changed in params.yaml (by hand or by
``dvc exp run -S key=value``) that the profile sets again at the same key. Such a run would be recorded as made
with the user's value while it ran with the profile's, so the resolve stage refuses it, naming both keys."""

from __future__ import annotations

from typing import Any

from farnet.config.profiles import profile_chain

_NOT_VALUES = ("profile", "profiles")


def shadowed_edits(now: dict[str, Any], before: dict[str, Any]) -> list[str]:
    """One line per leaf of ``now`` (params.yaml as it is) that differs from ``before`` (as last committed) and
    that the selected profile, or one it extends, sets again: ``"train.epochs: 5 is overridden by
    profiles.quick.train.epochs: 1"``. Empty under the ``paper`` profile (the base itself)."""
    profile = now.get("profile", "paper")
    profiles = now.get("profiles") or {}
    if profile == "paper" or not isinstance(profiles, dict):
        return []
    old = dict(_leaves({k: v for k, v in before.items() if k not in _NOT_VALUES}))
    chain = profile_chain(profiles, profile)
    found = []
    for path, value in _leaves({k: v for k, v in now.items() if k not in _NOT_VALUES}):
        if path in old and old[path] == value:
            continue
        for name, overrides in chain:
            for where, setting in _settings_of(overrides, path, now.get("runs") or {}):
                found.append(f"{'.'.join(path)}: {value!r} is overridden by profiles.{name}.{where}: {setting!r}")
        found += [f"{'.'.join(path)}: {value!r} is overridden by profiles.{where}: {setting!r} (trained_like)"
                  for where, setting in _trained_like_settings(chain, path)]
    return found


def _trained_like_settings(chain: list[tuple[str, dict]], path: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Where a profile's ``trained_like`` sets ``runs.<run>.<key>`` again: the source run's entry in a profile
    of ``chain``, or the ``with`` that the run is given."""
    if path[0] != "runs" or len(path) < 3:
        return []
    found = []
    for name, overrides in chain:
        like = overrides.get("trained_like")
        for source, spec in (like.items() if isinstance(like, dict) else ()):
            if not isinstance(spec, dict) or path[1] not in (spec.get("runs") or ()):
                continue
            for other, entries in chain:
                found += [(f"{other}.{where}", setting)
                          for where, setting in _settings_of(entries, ("runs", source, *path[2:]), {})]
            found += [(f"{name}.trained_like.{source}.{where}", setting)
                      for where, setting in _settings_of(spec, ("with", *path[2:]), {})]
    return found


def _settings_of(overrides: dict, path: tuple[str, ...], runs: dict) -> list[tuple[str, Any]]:
    """Where one profile's overrides set ``path`` again (the same section key, the same run's key, or its
    dataset's ``run_defaults`` key), with the value."""
    places = [(path, overrides)]
    if path[0] == "runs" and len(path) > 2:
        run, rest = path[1], path[2:]
        dataset = (runs.get(run) or {}).get("dataset") if isinstance(runs.get(run), dict) else None
        defaults = (overrides.get("run_defaults") or {}).get(dataset)
        if isinstance(defaults, dict) and run not in (defaults.get("exempt") or ()):
            places.append((("run_defaults", dataset, *rest), overrides))
    found = []
    for key, mapping in places:
        value: Any = mapping
        for part in key:
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            found.append((".".join(key), value))
    return found


def _leaves(mapping: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    leaves = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            leaves.extend(_leaves(value, (*prefix, str(key))))
        else:
            leaves.append(((*prefix, str(key)), value))
    return leaves
