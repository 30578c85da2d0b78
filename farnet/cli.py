"""The ``farnet`` command: one sub-command per module, imported only when it is used.

Each sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from farnet.core.allocator import tune_malloc
from farnet.core.errors import run_command

COMMANDS = {
    "bench": ("farnet.commands.bench", "time training and inference (fp32 and the fast paths); writes results/benchmarks/"),
    "predict": ("farnet.commands.predict", "landmarks for new images with a trained model (CSV, JSON, overlay PNG)"),
    "export": ("farnet.commands.export", "export a trained model to ONNX with its metadata"),
    "carry": ("farnet.commands.carry", "pack a prepared dataset into one file to copy to a machine without "
                                           "the data, e.g. node-local disk (build, info)"),
    "replicate": ("farnet.commands.replicate", "one run of the paper's protocol from a carry, without DVC: train, evaluate, "
                                      "benchmark, each result written as soon as it is known"),
    "exp-show": ("farnet.commands.exp_show", "the experiments with the headline numbers and their intervals, and "
                                              "the parameters that differ (what `make exp-show` prints)"),
    "settle": ("farnet.commands.settle", "short settling runs measuring one recipe choice each, chosen on held-out "
                                          "training images (pipelines/settling.yaml; docs/cpu-profile.md)"),
    "paper-gpus": ("farnet.commands.paper_gpus", "the paper's pipeline with its trainings side by side on a node's "
                                                  "GPUs, each run on a GPU of its own (docs/gpu-node.md)"),
    "replicate-import": ("farnet.commands.replicate_import", "import a `farnet replicate` output folder into results/gpu/ (Table 3's "
                                                         "GPU row) and results/benchmarks/cuda-<device>.json"),
}


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the `farnet` command itself, not a call from Python
        tune_malloc()  # re-executes once, before torch is imported: see farnet/core/allocator.py
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="farnet", description="FARNet replication suite")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the usage error and exits
    name = argv[0]

    def command() -> int:  # imported inside: an import that refuses the environment is one error line too
        module = importlib.import_module(COMMANDS[name][0])
        parser = argparse.ArgumentParser(prog=f"farnet {name}", description=COMMANDS[name][1])
        module.add_arguments(parser)
        return module.run(parser.parse_args(argv[1:]))

    return run_command(f"farnet {name}", command)  # one line per project error, as the stages


if __name__ == "__main__":
    sys.exit(main())
