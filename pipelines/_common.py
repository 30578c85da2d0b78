"""Argument parsing shared by the stage scripts: ``--params`` (default params.yaml), ``--run`` or ``--dataset``
(the run is positional) where the stage is one of a ``foreach`` group, and one option per folder the stage reads or writes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from farnet.config import Params, load_params


def parse(description: str, argv: Sequence[str] | None, *, run: bool = False, dataset: bool = False,
          **paths: str) -> tuple[Params, argparse.Namespace]:
    """Parse the stage's arguments and load its parameters (resolved for ``--run`` when the stage has one)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if run:  # positional: torchrun's own parser would take `--run` as a prefix of its `--run-path`
        parser.add_argument("run", help="an entry of `runs` in the params file")
    if dataset:
        parser.add_argument("--dataset", required=True, help="an entry of `datasets` in the params file")
    for name, default in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=default, help=f"default: {default}")
    args = parser.parse_args(argv)
    return load_params(args.params, run=args.run if run else None), args
