"""DVC stage `train`: one experiment through the training engine (resumes an interrupted run)."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse

from farnet.workflow import train_model


def main(argv=None) -> int:
    params, args = parse(__doc__, argv, prepared="data/prepared", model_dir="models/farnet",
                         log_dir="results/train/farnet")
    info = train_model(params, Path(args.prepared), Path(args.model_dir), Path(args.log_dir))
    print(f"trained {info['experiment']}: {info['epochs']} epochs, {info['steps']} steps, "
          f"{info['train_wall_s']} s on {info['device']}, final loss {info['final_loss']:.5g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
