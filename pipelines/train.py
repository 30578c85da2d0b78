"""DVC stage `train@<run>`: one run through the training engine (resumes an interrupted run)."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse, run_stage

from farnet.core.allocator import tune_malloc
from farnet.core.errors import ConfigError, TrainingInterrupted


def main(argv=None) -> int:
    from farnet.stages.train import train_run  # torch: imported after tune_malloc() has run

    params, args = parse(__doc__, argv, run=True, stage="train", prepared="data/prepared", models="models", train_logs="results/train")
    try:
        info = train_run(params, Path(args.prepared), Path(args.models) / args.run, Path(args.train_logs) / args.run)
    except ConfigError as exc:  # a setting the run cannot use: named in the file it came from
        raise ConfigError(f"{args.resolved or args.params}: {exc}") from None
    except TrainingInterrupted as exc:  # SIGINT/SIGTERM: a resumable checkpoint was saved; re-running resumes
        print(f"train {args.run}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"trained {args.run}: {info['epochs']} epochs, {info['steps']} steps, {info['train_wall_s']} s on "
          f"{info['device']}, final loss {info['final_loss']:.5g}")
    return 0


if __name__ == "__main__":
    tune_malloc()  # re-executes once, before torch is imported: see farnet/core/allocator.py
    sys.exit(run_stage(main))
