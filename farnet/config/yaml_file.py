"""Reading a params file strictly: YAML that hides mistakes is refused with the file and line.

A key given twice in one mapping (YAML keeps the last one silently) and anchors or aliases (``&a``, ``*a``: a few
KB of nested aliases expand to millions of values, and ``dvc exp run -S`` rewrites one copy of an anchored value
only) are errors, as are a missing file and a top level that is not a mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from farnet.core.errors import ConfigError

__all__ = ["read_params_file"]


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The parsed mapping of a params file, read strictly (:class:`_StrictLoader`).

    Raises:
        ConfigError: naming the file (and the line, for a duplicate key or an anchor): the file is missing, is
            not valid YAML, or is not a mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_bytes(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise ConfigError(f"{path}:{exc.problem_mark.line + 1}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a params file may not use."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without duplicate keys, anchors and aliases (see the module's docstring)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(problem="YAML anchors and aliases (&name, *name) are not allowed in a params file",
                           problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_document(self, node):
        _refuse_duplicate_keys(node, "")
        return super().construct_document(node)


def _refuse_duplicate_keys(node: yaml.Node, where: str) -> None:
    """Raise :class:`_Refused` at the second of two equal keys of one mapping anywhere under ``node``."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{where}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            _refuse_duplicate_keys(value_node, where)
            continue
        name = key_node.value
        key = f"{where}.{name}" if where else name
        if name in first_line:
            raise _Refused(problem=f"{key}: given twice (first on line {first_line[name]})",
                           problem_mark=key_node.start_mark)
        first_line[name] = key_node.start_mark.line + 1
        _refuse_duplicate_keys(value_node, key)
