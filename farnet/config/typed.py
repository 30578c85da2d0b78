"""A parsed mapping onto a params dataclass, field by field, refusing what the field's type does not allow.

Every error names the dotted key (``train.epochs: expected an integer, got 'many'``); a key the dataclass has no
field for is an error listing the keys allowed there. Values are only typed here: ranges are
:mod:`farnet.config.checks`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from typing import Any, Literal

from farnet.core.errors import ConfigError

__all__ = ["build", "plain"]


def build(cls: type, raw: Any, prefix: str) -> Any:
    """An instance of the params dataclass ``cls`` from ``raw``; keys it leaves out take their defaults.

    Args:
        cls: a params dataclass (:mod:`farnet.config.sections`).
        raw: its parsed mapping.
        prefix: the dotted key of ``raw`` followed by a dot ("" at the top), for the messages.

    Raises:
        ConfigError: naming the key of an unknown field or of a value of the wrong type.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'params'}: expected a mapping, got {raw!r}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{key}: unknown key (allowed here: {', '.join(sorted(names))})")
    values = {}
    for name in names & set(raw):
        values[name] = _coerce(hints[name], raw[name], f"{prefix}{name}")
    return cls(**values)


def plain(value: Any) -> Any:
    """``value`` with every tuple a list, as YAML and JSON write it (mappings copied)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved field types of a params dataclass (cached: resolving them cost more than the rest of a build,
    and :func:`farnet.config.load.check_every_run` builds every run)."""
    return typing.get_type_hints(cls)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """``value`` as the type ``hint`` (a dataclass, union, dict, Literal, tuple or scalar), or ConfigError."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(typing.get_args(hint), value, key)
    if origin is dict:
        return _coerce_dict(typing.get_args(hint)[1], value, key)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, typing.get_args(hint)))}")
        return value
    if origin is tuple:
        return _coerce_tuple(typing.get_args(hint), value, key)
    return _coerce_scalar(hint, value, key)


def _coerce_union(args: tuple, value: Any, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for alternative in [a for a in args if a is not type(None)]:  # the first that accepts it: `bool | Literal["auto"]`
        try:
            return _coerce(alternative, value, key)
        except ConfigError as exc:
            errors.append(str(exc).removeprefix(f"{key}: "))
    raise ConfigError(f"{key}: " + ", or ".join(errors))


def _coerce_dict(value_type: Any, value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise ConfigError(f"{key}: keys must be names, got {k!r}")
        out[k] = copy.deepcopy(v) if value_type is dict else _coerce(value_type, v, f"{key}.{k}")
    return out


def _coerce_tuple(args: tuple, value: Any, key: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
    return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # internal: a field type we do not map
