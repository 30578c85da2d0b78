"""Argument parsing shared by the stage scripts: ``--params`` (default params.yaml), ``--run`` or ``--dataset``
(the run is positional) where the stage is one of a ``foreach`` group, ``--resolved`` (the stage's own resolved
parameters, written by the resolve stage) where it has one, and one option per folder the stage reads or writes;
and :func:`run_stage`, which runs a stage's ``main`` and reports the project's errors in one line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from farnet.config import Params, load_params, params_from_stage, stage_params
from farnet.core.errors import ConfigError, run_command


def run_stage(main: Callable[[], int | None]) -> int:
    """The exit status of a stage script's ``main``: a config, data or write error (:class:`FarnetError`) is one
    line on stderr naming the file and key, with status 2 and no traceback (``FARNET_DEBUG=1`` shows it)."""
    return run_command(Path(sys.argv[0]).stem, main)


def parse(description: str, argv: Sequence[str] | None, *, run: bool = False, dataset: bool = False,
          stage: str | None = None, params: bool = True, **paths: str) -> tuple[Params | None, argparse.Namespace]:
    """Parse the stage's arguments and load its parameters (none with ``params=False``: the stage reads no
    parameters, only files, and has no ``--params``).

    With ``stage`` ("prepare", "train", "evaluate") the parameters are the stage's own
    (:func:`farnet.config.stage_params`): read from ``--resolved FILE`` (what DVC runs: the file is the stage's
    dependency), else resolved from ``--params`` for ``--run``/``--dataset`` (a stage run by hand, or torchrun).
    """
    parser = argparse.ArgumentParser(description=description)
    if params:
        parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if stage is not None:
        parser.add_argument("--resolved", type=Path, default=None,
                            help="this stage's resolved parameters (resolved/...json); default: from --params")
    if run:  # positional: torchrun's own parser would take `--run` as a prefix of its `--run-path`
        parser.add_argument("run", help="an entry of `runs` in the params file")
    if dataset:
        parser.add_argument("--dataset", required=True, help="an entry of `datasets` in the params file")
    for name, default in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=default, help=f"default: {default}")
    args = parser.parse_args(argv)
    if not params:
        return None, args
    if stage is not None and args.resolved is not None:
        resolved = _read_resolved(args.resolved)
        if run and resolved.run != args.run:
            raise ConfigError(f"{args.resolved}: resolved for run {resolved.run!r}, not {args.run!r}")
        if dataset and args.dataset not in resolved.datasets:
            raise ConfigError(f"{args.resolved}: resolved for dataset {sorted(resolved.datasets)}, "
                              f"not {args.dataset!r}")
        return resolved, args
    loaded = load_params(args.params, run=args.run if run else None)
    if dataset and args.dataset not in loaded.datasets:
        raise ConfigError(f"{args.params}: --dataset {args.dataset!r} has no entry under datasets "
                          f"(have: {', '.join(sorted(loaded.datasets))})")
    if stage is not None:
        loaded = params_from_stage(stage_params(loaded, stage, getattr(args, "dataset", None)), args.params)
    return loaded, args


def _read_resolved(path: Path) -> Params:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: resolved parameters not found (`dvc repro resolve` writes them)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return params_from_stage(raw, path)
