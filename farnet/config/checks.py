"""Range checks that types alone cannot express, each naming the dotted key and the bad value.

Every number finite and in its range (:data:`RANGES`), each dataset's cache size a multiple of the coarsest stride
of every registered network, a run's input size one its network can train at
(:func:`farnet.models.registry.input_size_problem`), ``data.fold`` one of the dataset's folds
(:meth:`~farnet.data.registry.DatasetSpec.check_fold`) and ``model.pretrained`` a source that exists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from farnet.config.sections import Params
from farnet.core.errors import ConfigError
from farnet.data.registry import get_dataset
from farnet.models.registry import COMMON_MULTIPLE, input_size_problem

__all__ = ["SEED_MAX", "RANGES", "check_finite", "check_values"]

# augmentation keeps a seed's low 32 bits (farnet.data.augment): a larger seed would alias a smaller one
SEED_MAX = 2**32 - 1


def _increasing(milestones: tuple[int, ...]) -> bool:
    return all(a < b for a, b in zip((0, *milestones), milestones))


# (dotted key, test of its value, why it fails): checked in this order, the first failure reported
RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.fold", lambda v: v >= 1, "must be >= 1"),
    ("data.train_limit", lambda v: v is None or v > 0, "must be positive or null"),
    ("seed", lambda v: 0 <= v <= SEED_MAX, "must be in [0, 2**32 - 1]"),
    ("heatmap.sigma_px", lambda v: 0.5 <= v <= 100, "must be in [0.5, 100] px"),
    ("loss.alpha", lambda v: v >= 1, "must be >= 1 (weight 1 on the background)"),
    ("loss.awing_omega", lambda v: v > 0, "must be > 0"),
    ("loss.awing_theta", lambda v: v > 0, "must be > 0"),
    ("loss.awing_epsilon", lambda v: v > 0, "must be > 0"),
    ("loss.awing_alpha", lambda v: v > 1, "must be > 1 (the loss's slope at 0 is infinite otherwise)"),
    ("model.fr_input_kernel", lambda v: v in (1, 3, 5, 7), "must be 1, 3, 5 or 7"),
    ("train.lr", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("train.lr_gamma", lambda v: 0 < v <= 1, "must be in (0, 1] (the lr is multiplied by it at each milestone)"),
    ("train.lr_milestones", _increasing, "must be increasing epochs >= 1"),
    ("train.epochs", lambda v: v > 0, "must be > 0"),
    ("train.batch_size", lambda v: v > 0, "must be > 0"),
    ("train.num_workers", lambda v: v >= 0, "must be >= 0"),
    ("train.checkpoint_every", lambda v: v > 0, "must be > 0"),
    ("train.warmup_steps", lambda v: v >= 0, "must be >= 0"),
    ("train.log_every_steps", lambda v: v >= 0, "must be >= 0"),
    ("train.monitor_every", lambda v: v >= 0, "must be >= 0"),
    ("eval.guided_radius", lambda v: 0 < v <= 1, "must be in (0, 1] (a fraction of the input height)"),
    ("eval.sdr_radii_mm", lambda v: len(v) > 0 and all(r > 0 for r in v), "must be positive radii"),
    ("eval.batch_size", lambda v: v > 0, "must be > 0"),
)


def check_values(p: Params) -> None:
    """Every check of the module's docstring, in that order.

    Raises:
        ConfigError: the first failure, naming its key and value.
    """
    check_finite(p)
    _check_datasets(p)
    for key, ok, why in RANGES:
        value = _value(p, key)
        if not ok(value):
            raise ConfigError(f"{key}: {value!r} {why}")
    _check_input_size(p)
    get_dataset(p.data.dataset).check_fold(p.data.fold)
    pretrained = p.model.pretrained
    if pretrained not in ("none", "imagenet") and not Path(pretrained).is_file():
        raise ConfigError(f"model.pretrained: {pretrained!r} is neither none, imagenet nor an existing weights file "
                          f"(relative to {Path.cwd()})")


def check_finite(value: Any, prefix: str = "") -> None:
    """ConfigError naming the first float in ``value`` (a params dataclass, mapping, list or number) that is not
    finite; ``prefix`` is its dotted key followed by a dot ("" at the top)."""
    for key, number in _floats(value, prefix.rstrip(".")):
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {number!r} must be a finite number")


def _check_datasets(p: Params) -> None:
    """Each dataset's cache size and split seed; a run's dataset one that has an entry."""
    for name, dataset in p.datasets.items():
        if not _multiples_of_common(dataset.input_hw):
            raise ConfigError(f"datasets.{name}.input_hw: {dataset.input_hw!r} both sizes must be positive multiples "
                              f"of {COMMON_MULTIPLE} (the coarsest stride of every registered network)")
        if not 0 <= dataset.split_seed <= SEED_MAX:
            raise ConfigError(f"datasets.{name}.split_seed: {dataset.split_seed!r} must be in [0, 2**32 - 1]")
        csv = PurePosixPath(dataset.csv.replace("\\", "/"))
        if not dataset.csv.strip() or csv.is_absolute() or ".." in csv.parts or PureWindowsPath(dataset.csv).drive:
            # fetch copies the CSV into data/raw/<name>/ under this name: outside it, the copy would escape the
            # stage's output (or be the source file itself)
            raise ConfigError(f"datasets.{name}.csv: {dataset.csv!r} must be a file name inside the dataset folder "
                              f"(relative to datasets.{name}.root, no '..'); point root at the folder that holds it")
    if p.run is not None and p.data.dataset not in p.datasets:  # a run must train on a configured dataset
        raise ConfigError(f"data.dataset: {p.data.dataset!r} has no entry under datasets (have: {sorted(p.datasets)})")


def _check_input_size(p: Params) -> None:
    """A run's input size must suit its network; the base's ``data.input_hw`` (no network chosen yet) must suit
    every registered one."""
    if p.run is not None:
        key = "data.input_hw" if p.data.input_hw is not None else f"datasets.{p.data.dataset}.input_hw"
        problem = input_size_problem(p.input_hw, p.model.architecture, p.model.backbone)
        if problem:
            raise ConfigError(f"{key}: {list(p.input_hw)!r} {problem}")
    elif p.data.input_hw is not None and not _multiples_of_common(p.data.input_hw):
        raise ConfigError(f"data.input_hw: {p.data.input_hw!r} both sizes must be positive multiples of "
                          f"{COMMON_MULTIPLE}")


def _multiples_of_common(hw: tuple[int, int]) -> bool:
    return all(v > 0 and v % COMMON_MULTIPLE == 0 for v in hw)


def _value(p: Params, key: str) -> Any:
    value: Any = p
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _floats(value: Any, key: str) -> Iterator[tuple[str, float]]:
    """Every float in ``value`` (a params dataclass, mapping, tuple or number) with its dotted key."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _floats(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _floats(item, f"{key}.{name}" if key else name)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _floats(item, f"{key}[{i}]")
    elif isinstance(value, float):
        yield key, value
