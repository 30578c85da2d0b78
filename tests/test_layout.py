"""The package's layout: no import cycle (function-level imports included) and no lower layer importing a
higher one. Layers, lowest first: the core (errors, files, coordinates, devices, checkpoints, provenance), the data readers
and the model registry (pure tables), the config, the models, evaluation, training, reporting, the DVC stages'
library functions, the commands, and the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (
    ("farnet.core",),
    ("farnet.data", "farnet.models.registry"),
    ("farnet.config",),
    ("farnet.models", "baselines"),
    ("farnet.evaluation",),
    ("farnet.training",),
    ("farnet.report",),
    ("farnet.stages",),
    ("farnet.commands",),
    ("farnet.cli", "farnet.__main__"),
)


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("farnet", "baselines"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its text (top level, in functions, under
    TYPE_CHECKING). A package's ``__init__`` counts only where it is imported itself: test_package_inits_import_
    nothing checks that every one of them is a docstring alone, so reaching a module through it costs nothing."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                names = submodules or [base]  # `from pkg import module` reaches the module; else the package
            else:
                continue
            targets.update(target for target in names if target in modules)
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def layer_of(module: str) -> int:
    best, layer = "", None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, layer = prefix, i
    assert layer is not None, f"{module} is in no layer: add it to LAYERS"
    return layer


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_lower_layer_imports_a_higher_one():
    upward = sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                    for m, targets in import_graph().items() for t in targets if layer_of(t) > layer_of(m))
    assert upward == []


@pytest.mark.parametrize("module", ["farnet.config", "farnet.models.registry", "farnet.data.registry"])
def test_the_registries_import_no_network_code(module):
    """The config validates against the registries without importing torch-side code above them."""
    assert all(layer_of(t) <= layer_of("farnet.config") for t in import_graph()[module])


def test_package_inits_import_nothing():
    """Every package ``__init__`` but the command packages' and the config's is its docstring alone, so that
    importing a low module (the model registry, a data reader) never runs the code of the package above it."""
    heavy = [name for name, path in _modules().items() if path.name == "__init__.py"
             and any(isinstance(n, (ast.Import, ast.ImportFrom)) and not (isinstance(n, ast.ImportFrom)
                                                                          and n.module == "__future__")
                     for n in ast.parse(path.read_text()).body)]
    # `farnet bench`'s entry points, the command loaded by name; the config's public names, one package by idea
    assert heavy == ["farnet.commands.bench", "farnet.config"]
