"""Typed configuration: ``params.yaml`` mapped onto frozen dataclasses.

``params.yaml`` holds the paper's protocol as the base and named *profiles* (``profiles.quick``) whose keys are
merged over the base when ``profile`` names one. This is the one place that reads the file: unknown keys, wrong
types and bad choices raise :class:`~farnet.core.errors.ConfigError` naming the dotted key. Modules never see these
objects; only the ``build_*`` factories and the pipeline stages do.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from farnet.data.registry import DATASETS, get_dataset
from farnet.core.errors import ConfigError
from farnet.models.registry import (ARCHITECTURE_NAMES, BACKBONE_NAMES, COMMON_MULTIPLE, input_size_problem)

# The choices of these keys are the registries' entries: one table each, read here
BackboneName = Literal[BACKBONE_NAMES]
ArchitectureName = Literal[ARCHITECTURE_NAMES]
DatasetName = Literal[tuple(DATASETS)]


@dataclass(frozen=True)
class DatasetParams:
    """How one dataset is prepared (``datasets.<name>`` in params.yaml)."""

    input_hw: tuple[int, int] = (800, 640)  # the size the prepare stage caches at
    annotator: Literal["mean", "senior", "junior"] = "mean"  # ISBI ground truth (paper: mean)
    augment: Literal["none", "payer", "boostnet"] = "none"
    split_seed: int = 0  # spine: the seeded 431/50 split and its folds; custom: splits when none are given
    root: str | None = None  # custom: the dataset folder; None = data/raw/<name>
    csv: str = "landmarks.csv"  # custom: the landmarks file in that folder


@dataclass(frozen=True)
class DataParams:
    """What one run trains and evaluates on."""

    dataset: DatasetName = "isbi2015"  # set by the run's `dataset`
    input_hw: tuple[int, int] | None = None  # None: the dataset's prepared size; else resized from it
    train_limit: int | None = None  # keep the first N training images (reduced profiles only)
    fold: int = 1  # hand: 1..3, spine: 1..5 (cross-validation folds); ignored by ISBI


@dataclass(frozen=True)
class HeatmapParams:
    sigma_px: float = 10.0  # paper §4.2, in each head's own pixels


@dataclass(frozen=True)
class ModelParams:
    backbone: BackboneName = "densenet121"
    pretrained: str = "none"  # "imagenet" (needs internet), "none", or a path to a state dict
    fusion: Literal["concat", "add"] = "concat"  # MSFA vs MSFA(+) of Table 2
    refinement: Literal["guided", "naive", "none"] = "guided"  # FR, FR*, no FR
    fr_input_kernel: int = 3  # paper §3.1.2: 3x3; the authors' code: 1x1
    head: Literal["authors", "bn_relu"] = "authors"  # both heads as the authors' network | conv+BN+ReLU option
    architecture: ArchitectureName = "farnet"  # the U-Net and FPN baselines of Table 2


@dataclass(frozen=True)
class LossParams:
    name: Literal["ewc", "l2", "awing"] = "ewc"
    alpha: float = 40.0  # EWC base, paper eq. 3
    # Adaptive Wing (Wang et al. 2019), the "+AW" row of Table 2: ω, θ, ε, α of that paper
    awing_omega: float = 14.0
    awing_theta: float = 0.5
    awing_epsilon: float = 1.0
    awing_alpha: float = 2.1


@dataclass(frozen=True)
class TrainParams:
    # deviation: Adam with lr 1e-4, x0.1 at epoch 200 (the authors' code) by default; the paper's text names
    # Adadelta at lr 1e-4, which scales Adadelta's unit step by 1e-4 and barely trains. `optimizer: adadelta`.
    optimizer: Literal["adam", "adadelta"] = "adam"
    lr: float = 1e-4
    lr_milestones: tuple[int, ...] = (200,)
    lr_gamma: float = 0.1
    epochs: int = 300
    batch_size: int = 1
    # deviation: "auto" trains with bf16 autocast (and channels_last) where the hardware runs bf16 natively
    # (farnet.core.fastpath; docs/design.md §7); the paper trains in fp32, which `precision: fp32` restores.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    num_workers: int = 0
    checkpoint_every: int = 1
    save_dtype: Literal["fp32", "bf16"] = "fp32"  # the floating-point weights of model.pt (training is unchanged)
    # "step": lr x lr_gamma at each of lr_milestones (epochs; the authors' code); "cosine": a half cosine from
    # lr to 0 over all steps, per step (beyond the paper: the cpu profile)
    lr_schedule: Literal["step", "cosine"] = "step"
    warmup_steps: int = 0  # linear warm-up from ~0 to lr over the first steps (0: none)
    log_every_steps: int = 0  # the training loss (mean over the last N steps) logged every N steps; 0: per epoch
    monitor_every: int = 0  # epochs between Test1/Test2 MREs logged during training, for the curves only; 0: never


@dataclass(frozen=True)
class EvalParams:
    # deviation: the last epoch is evaluated by default, so no test data choose the model; the paper validates
    # on Test1 (`select: best_test1` mimics it, and the tables say which was used).
    select: Literal["last", "best_test1"] = "last"
    sdr_radii_mm: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0)
    batch_size: int = 4
    # beyond the paper: the "guided" decoder takes the fine head's argmax within this fraction of the input
    # height (Chebyshev; 30 px at 800x640, 12 px at 320x256) of the coarse head's peak; reported in its own
    # column, never in place of argmax
    guided_radius: float = 0.0375


@dataclass(frozen=True)
class Params:
    profile: str = "paper"
    run: str | None = None  # the entry of `runs` these parameters were resolved for
    seed: int = 0
    datasets: dict[str, DatasetParams] = field(default_factory=lambda: {"isbi2015": DatasetParams()})
    data: DataParams = field(default_factory=DataParams)
    heatmap: HeatmapParams = field(default_factory=HeatmapParams)
    model: ModelParams = field(default_factory=ModelParams)
    loss: LossParams = field(default_factory=LossParams)
    train: TrainParams = field(default_factory=TrainParams)
    eval: EvalParams = field(default_factory=EvalParams)
    runs: dict[str, dict] = field(default_factory=dict)  # run name -> overrides (see `resolve_run`)

    @property
    def dataset(self) -> DatasetParams:
        """The preparation parameters of this run's dataset."""
        return self.datasets[self.data.dataset]

    @property
    def input_hw(self) -> tuple[int, int]:
        """The network input (H, W) of this run: ``data.input_hw``, else the dataset's prepared size."""
        return self.data.input_hw if self.data.input_hw is not None else self.dataset.input_hw


def load_params(path: str | Path = "params.yaml", run: str | None = None) -> Params:
    """Read a params file, apply its profile (and, given ``run``, that run's overrides) and validate every key.

    Every run under every profile is resolved too (:func:`check_every_run`), so a mistake in another run or
    profile is reported now, not when that run's turn comes.

    Raises:
        ConfigError: the file is missing or not a mapping, a key is unknown, a value has the wrong type or
            is not one of the allowed choices, or ``profile`` names no entry of ``profiles``.
    """
    raw = read_params_file(path)
    try:
        params = params_from_dict(raw, run)  # first, so an error in what was asked for reads as it is
        check_every_run(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return params


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The parsed mapping of a params file, read strictly (:class:`_StrictLoader`): a key given twice in one
    mapping and YAML anchors or aliases are errors naming the file and line."""
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
    """``yaml.SafeLoader`` without what a params file never needs and what hides mistakes: a key given twice in
    one mapping (YAML keeps the last one silently) and anchors or aliases (``&a``, ``*a``: a few KB of nested
    aliases expand to millions of values)."""

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
        for name, overrides in _profile_chain(profiles, profile):
            raw = _merge(raw, overrides, "profiles." + name)
    runs = raw.get("runs") or {}
    if not isinstance(runs, dict):
        raise ConfigError("runs: expected a mapping of run name to overrides")
    for name, entry in runs.items():
        if not isinstance(entry, dict) or "dataset" not in entry:
            raise ConfigError(f"runs.{name}: expected a mapping with a `dataset` key, got {entry!r}")
    if run is not None:
        if run not in runs:
            raise ConfigError(f"run {run!r} is not defined under runs (have: {', '.join(sorted(runs))})")
        overrides = copy.deepcopy(runs[run])
        dataset = overrides.pop("dataset")
        if "run" in overrides or "runs" in overrides or "profile" in overrides:
            raise ConfigError(f"runs.{run}: may not override run, runs or profile")
        data = overrides.get("data") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"runs.{run}.data: expected a mapping, got {data!r}")
        overrides["data"] = {**data, "dataset": dataset}
        raw = _merge(raw, overrides, f"runs.{run}")
        raw["run"] = run
    params = _build(Params, raw, "")
    _check_values(params)
    return params


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
            return len(_profile_chain(profiles, name))
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


def _profile_chain(profiles: dict[str, Any], profile: Any) -> list[tuple[str, dict]]:
    """The overrides a profile applies, base first: a profile's ``extends: <name>`` merges that profile under
    its own keys (e.g. ``cpu`` is ``quick`` with a longer ``farnet`` run)."""
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
        if parent is None:
            return chain
        if parent == "paper":  # the base itself
            return chain
        if any(name == parent for name, _ in chain):
            raise ConfigError(f"profiles.{profile}.extends: {parent!r} makes a cycle of profiles")
        profile = parent


SEED_MAX = 2**32 - 1  # augmentation keeps a seed's low 32 bits (farnet.data.augment): a larger one would alias a smaller


def _check_values(p: Params) -> None:
    """Range checks that types alone cannot express: every number finite and in its range, ``data.fold`` one of
    the dataset's folds (:meth:`~farnet.data.registry.DatasetSpec.check_fold`), ``model.pretrained`` a source
    that exists."""
    for key, value in _floats(p, ""):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} must be a finite number")
    for name, dataset in p.datasets.items():
        if not all(v > 0 and v % COMMON_MULTIPLE == 0 for v in dataset.input_hw):
            raise ConfigError(f"datasets.{name}.input_hw: {dataset.input_hw!r} both sizes must be positive multiples "
                              f"of {COMMON_MULTIPLE} (the coarsest stride of every registered network)")
        if not 0 <= dataset.split_seed <= SEED_MAX:
            raise ConfigError(f"datasets.{name}.split_seed: {dataset.split_seed!r} must be in [0, 2**32 - 1]")
    if p.run is not None and p.data.dataset not in p.datasets:  # a run must train on a configured dataset
        raise ConfigError(f"data.dataset: {p.data.dataset!r} has no entry under datasets (have: {sorted(p.datasets)})")
    checks = [
        ("data.fold", p.data.fold >= 1, "must be >= 1"),
        ("data.train_limit", p.data.train_limit is None or p.data.train_limit > 0, "must be positive or null"),
        ("seed", 0 <= p.seed <= SEED_MAX, "must be in [0, 2**32 - 1]"),
        ("heatmap.sigma_px", 0.5 <= p.heatmap.sigma_px <= 100, "must be in [0.5, 100] px"),
        ("loss.alpha", p.loss.alpha >= 1, "must be >= 1 (weight 1 on the background)"),
        ("loss.awing_omega", p.loss.awing_omega > 0, "must be > 0"),
        ("loss.awing_theta", p.loss.awing_theta > 0, "must be > 0"),
        ("loss.awing_epsilon", p.loss.awing_epsilon > 0, "must be > 0"),
        ("loss.awing_alpha", p.loss.awing_alpha > 1, "must be > 1 (the loss's slope at 0 is infinite otherwise)"),
        ("model.fr_input_kernel", p.model.fr_input_kernel in (1, 3, 5, 7), "must be 1, 3, 5 or 7"),
        ("train.lr", 0 < p.train.lr <= 1, "must be in (0, 1]"),
        ("train.lr_gamma", 0 < p.train.lr_gamma <= 1,
         "must be in (0, 1] (the lr is multiplied by it at each milestone)"),
        ("train.lr_milestones", all(a < b for a, b in zip((0, *p.train.lr_milestones), p.train.lr_milestones)),
         "must be increasing epochs >= 1"),
        ("train.epochs", p.train.epochs > 0, "must be > 0"),
        ("train.batch_size", p.train.batch_size > 0, "must be > 0"),
        ("train.num_workers", p.train.num_workers >= 0, "must be >= 0"),
        ("train.checkpoint_every", p.train.checkpoint_every > 0, "must be > 0"),
        ("train.warmup_steps", p.train.warmup_steps >= 0, "must be >= 0"),
        ("train.log_every_steps", p.train.log_every_steps >= 0, "must be >= 0"),
        ("train.monitor_every", p.train.monitor_every >= 0, "must be >= 0"),
        ("eval.guided_radius", 0 < p.eval.guided_radius <= 1, "must be in (0, 1] (a fraction of the input height)"),
        ("eval.sdr_radii_mm", len(p.eval.sdr_radii_mm) > 0 and all(r > 0 for r in p.eval.sdr_radii_mm), "must be positive radii"),
        ("eval.batch_size", p.eval.batch_size > 0, "must be > 0"),
    ]
    for key, ok, why in checks:
        if not ok:
            value = p
            for part in key.split("."):
                value = getattr(value, part)
            raise ConfigError(f"{key}: {value!r} {why}")
    if p.run is not None:  # the size this run trains at must suit its network
        key = "data.input_hw" if p.data.input_hw is not None else f"datasets.{p.data.dataset}.input_hw"
        problem = input_size_problem(p.input_hw, p.model.architecture, p.model.backbone)
        if problem:
            raise ConfigError(f"{key}: {list(p.input_hw)!r} {problem}")
    elif p.data.input_hw is not None and not all(v > 0 and v % COMMON_MULTIPLE == 0 for v in p.data.input_hw):
        raise ConfigError(f"data.input_hw: {p.data.input_hw!r} both sizes must be positive multiples of "
                          f"{COMMON_MULTIPLE}")
    get_dataset(p.data.dataset).check_fold(p.data.fold)
    pretrained = p.model.pretrained
    if pretrained not in ("none", "imagenet") and not Path(pretrained).is_file():
        raise ConfigError(f"model.pretrained: {pretrained!r} is neither none, imagenet nor an existing weights file "
                          f"(relative to {Path.cwd()})")


def _floats(value: Any, key: str) -> typing.Iterator[tuple[str, float]]:
    """Every float in ``value`` (a params dataclass, mapping, tuple or number) with its dotted key."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _floats(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _floats(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _floats(item, f"{key}[{i}]")
    elif isinstance(value, float):
        yield key, value


def section_from_dict(cls: type, raw: dict[str, Any], name: str) -> Any:
    """One validated section (e.g. :class:`ModelParams`) from already-resolved values, such as the parameters
    stored in a checkpoint."""
    return _build(cls, raw, name + ".")


def effective_dict(params: Params) -> dict[str, Any]:
    """The resolved parameters as plain data (for provenance and checkpoints)."""
    return _plain(dataclasses.asdict(params))


STAGES = ("prepare", "train", "evaluate")


def stage_params(params: Params, stage: str, dataset: str | None = None) -> dict[str, Any]:
    """The resolved parameters one stage of one run (or dataset) reads, and nothing else.

    The resolve stage writes this per run (``resolved/<run>/train.json``, ``evaluate.json``) and per dataset
    (``resolved/datasets/<name>.json``); the train, evaluate and prepare stages depend on those files and build
    their parameters from them (:func:`params_from_stage`), so ``dvc exp run -S loss.alpha=20`` re-runs only the
    runs whose own values changed: an L2 run carries no ``loss.alpha``, a U-Net no backbone.

    Args:
        params: resolved for a run (``load_params(..., run=...)``) for "train" and "evaluate"; any for "prepare".
        stage: "prepare", "train" or "evaluate".
        dataset: the dataset "prepare" is for; the run's own for the others.
    """
    p = effective_dict(params)
    if stage == "prepare":
        return {"profile": params.profile, "datasets": {dataset: p["datasets"][dataset]}}
    dataset = params.data.dataset
    if stage == "evaluate":
        return {"run": params.run, "datasets": {dataset: p["datasets"][dataset]},
                "data": {"dataset": dataset, "fold": params.data.fold},
                "eval": {k: p["eval"][k] for k in ("sdr_radii_mm", "batch_size", "guided_radius")},
                "train": {k: p["train"][k] for k in ("precision", "channels_last")}}
    if stage != "train":
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    model = p["model"]
    if model["architecture"] == "unet":  # trained from scratch, no backbone
        model = {"architecture": "unet"}
    elif model["architecture"] == "fpn":
        model = {k: model[k] for k in ("architecture", "backbone", "pretrained")}
    elif model["refinement"] == "none" or model["backbone"].startswith("vgg"):  # no FR input conv to size
        model = {k: v for k, v in model.items() if k != "fr_input_kernel"}
    loss_keys = {"ewc": ("alpha",), "l2": (), "awing": ("awing_omega", "awing_theta", "awing_epsilon", "awing_alpha")}
    loss = {"name": p["loss"]["name"], **{k: p["loss"][k] for k in loss_keys[p["loss"]["name"]]}}
    evaluation = {"select": p["eval"]["select"]}
    if params.eval.select == "best_test1" or params.train.monitor_every:  # Test1 during training reads these
        evaluation.update({k: p["eval"][k] for k in ("sdr_radii_mm", "batch_size")})
    return {"profile": params.profile, "run": params.run, "seed": params.seed,
            "datasets": {dataset: p["datasets"][dataset]}, "data": p["data"], "heatmap": p["heatmap"],
            "model": model, "loss": loss, "train": p["train"], "eval": evaluation}


def params_from_stage(raw: dict[str, Any], where: str | Path = "resolved parameters") -> Params:
    """:class:`Params` from a :func:`stage_params` mapping; keys it leaves out take their defaults, which the
    stage does not read."""
    try:
        params = _build(Params, raw, "")
        _check_values(params)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return params


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _merge(base: dict, override: Any, where: str) -> dict:
    if not isinstance(override, dict):
        raise ConfigError(f"{where}: expected a mapping")
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved field types of a params dataclass (cached: resolving them cost more than the rest of a build,
    and :func:`check_every_run` builds every run)."""
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, prefix: str) -> Any:
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


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for alternative in inner:  # the first that accepts the value, e.g. `bool | Literal["auto"]`
            try:
                return _coerce(alternative, value, key)
            except ConfigError as exc:
                errors.append(str(exc).removeprefix(f"{key}: "))
        raise ConfigError(f"{key}: " + ", or ".join(errors))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = args
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{key}: keys must be names, got {k!r}")
            out[k] = copy.deepcopy(v) if value_type is dict else _coerce(value_type, v, f"{key}.{k}")
        return out
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
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
