"""dvc.yaml's code dependencies are what each stage script really imports, so `dvc repro` cannot leave a result
stale after a code change: every module a stage's script reaches (``import`` statements anywhere in the file,
followed transitively inside the project's packages) must lie under one of that stage's deps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("farnet", "baselines", "_common")  # _common: pipelines/_common.py, imported by every stage script


def stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    """Stage name -> its body (``do`` for a foreach stage)."""
    raw = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: body.get("do", body) for name, body in raw.items()}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    for base in (ROOT, ROOT / "pipelines"):
        path = base.joinpath(*parts)
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py")
    return None


def _imported_names(path: Path) -> set[str]:
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the file's own package
                module = ".".join([*package[:len(package) - node.level + 1], *([module] if module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def reached_modules(script: Path) -> set[Path]:
    """Every project file ``script`` imports, transitively (the script itself included)."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path):
            parts = name.split(".")
            if parts[0] not in PACKAGES:
                continue
            for i in range(1, len(parts) + 1):  # a package's __init__ runs on the way to its modules
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def uncovered(body: dict) -> list[str]:
    """The modules a stage's script reaches that none of its deps covers."""
    script = ROOT / next(word for word in body["cmd"].split() if word.endswith(".py"))
    deps = [ROOT / d for d in body.get("deps", []) if "${" not in d]
    missing = []
    for module in sorted(reached_modules(script)):
        if not any(module == dep or dep in module.parents for dep in deps):
            missing.append(str(module.relative_to(ROOT)))
    return missing


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_module_a_stage_reaches_is_a_dependency(name):
    assert uncovered(stages()[name]) == [], f"dvc.yaml stage {name!r} lacks deps"


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_code_dependency_exists(name):
    for dep in stages()[name].get("deps", []):
        if not dep.startswith(("data/", "models/", "results/", "resolved/")):  # produced by earlier stages
            assert (ROOT / dep).exists(), f"{name}: {dep}"


def test_a_removed_dependency_is_caught(tmp_path):
    body = dict(stages()["train"])
    assert uncovered(body) == []
    body["deps"] = [d for d in body["deps"] if d != "farnet/training"]
    assert "farnet/training/engine.py" in uncovered(body)


def test_imports_inside_functions_count(tmp_path):
    script = ROOT / "pipelines" / "train.py"  # imports the stage module inside main(), after tune_malloc
    assert ROOT / "farnet" / "stages" / "train.py" in reached_modules(script)


# A stage may name a single file of a package only where it reaches one module of a package whose rest it never
# runs: its own module in farnet/stages, and the model registry (pure tables) the config validates against.
SINGLE_FILES_ALLOWED = {"farnet/models/registry.py"}


@pytest.mark.parametrize("name", sorted(stages()))
def test_code_dependencies_are_folders(name):
    files = [d.split("#")[0].strip() for d in stages()[name].get("deps", [])
             if d.startswith("farnet/") and (ROOT / d.split("#")[0].strip()).is_file()]
    single = [f for f in files if not f.endswith("/__init__.py") and not f.startswith("farnet/stages/")
              and f not in SINGLE_FILES_ALLOWED]
    assert single == [], f"{name}: list the folder of {single}"
