"""The paper's protocol as one run's parameters, for ``farnet replicate`` and its side-by-side processes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from farnet.config import DatasetParams, Params, params_from_dict, read_params_file
from farnet.core.errors import ConfigError


def replication_params(params_path: str | Path, run_name: str, carry_hw: tuple[int, int],
                       input_hw: tuple[int, int] | None = None) -> tuple[Params, tuple[int, int]]:
    """The run's parameters under the paper profile (whatever ``profile`` the file selects), its dataset prepared at
    the carry's size, trained at ``input_hw`` (default: that size), with one checkpoint at the end only.

    Returns:
        The parameters, and the input size the file itself gives the dataset (the paper's, for the label).

    Raises:
        ConfigError: naming the file, for a run it does not define or a value the config refuses.
    """
    raw = read_params_file(params_path)
    raw["profile"] = "paper"  # the paper's protocol is the base of the file; its profiles are reductions
    runs = raw.get("runs") or {}
    if not isinstance(runs.get(run_name), dict) or "dataset" not in runs[run_name]:
        raise ConfigError(f"{params_path}: run {run_name!r} is not defined under runs "
                          f"(have: {', '.join(sorted(runs))})")
    dataset = runs[run_name]["dataset"]
    datasets = raw.setdefault("datasets", {})
    own = dict(datasets.get(dataset) or {})
    paper_hw = tuple(own.get("input_hw", DatasetParams().input_hw))
    datasets[dataset] = {**own, "input_hw": list(carry_hw)}
    if input_hw is not None:  # deviation: (--input-hw only) not the paper's size; the results say so (input_gap)
        entry = dict(runs[run_name])
        entry["data"] = {**(entry.get("data") or {}), "input_hw": list(input_hw)}
        runs[run_name] = entry
    try:
        params = params_from_dict(raw, run_name)
    except ConfigError as exc:
        raise ConfigError(f"{params_path}: {exc}") from None
    # one checkpoint, at the end: a run on a GPU node or cloud box keeps its model and results, not 30 checkpoints
    return replace(params, train=replace(params.train, checkpoint_every=params.train.epochs)), paper_hw


def carry_params(carry: Path, info: dict, params_path: str | Path, run_name: str, input_hw: tuple[int, int] | None,
                 num_workers: int | None = None) -> tuple[Params, tuple[int, int]]:
    """:func:`replication_params` for a carry described by ``info`` (its ``carry.json``), with ``num_workers``
    data-loading processes when given (else the file's).

    Raises:
        ConfigError: as :func:`replication_params`, or naming ``carry`` when it holds another dataset than the run
            trains on.
    """
    params, paper_hw = replication_params(params_path, run_name, tuple(info["input_hw"]), input_hw)
    if info["dataset"] != params.data.dataset:
        raise ConfigError(f"{carry}: holds {info['dataset']}, but run {run_name!r} trains on {params.data.dataset}")
    if num_workers is not None:
        params = replace(params, train=replace(params.train, num_workers=num_workers))
    return params, paper_hw


def input_gap(input_hw: tuple[int, int], paper_hw: tuple[int, int]) -> list[str]:
    """Why the input size is not the paper's (empty when it is)."""
    if tuple(input_hw) == tuple(paper_hw):
        return []
    return [f"input {input_hw[0]}x{input_hw[1]} instead of the paper's {paper_hw[0]}x{paper_hw[1]}"]
