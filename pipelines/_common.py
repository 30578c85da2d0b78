"""Argument parsing shared by the stage scripts: every stage takes ``--params`` (default params.yaml)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from farnet.config import Params, load_params


def parse(description: str, argv: Sequence[str] | None, **paths: str) -> tuple[Params, argparse.Namespace]:
    """Parse ``--params`` plus one ``--<name>`` option per folder in ``paths`` (their defaults)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, default in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=default, help=f"default: {default}")
    args = parser.parse_args(argv)
    return load_params(args.params), args
