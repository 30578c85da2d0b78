"""DVC stage `prepare@<dataset>`: every image decoded once and cached at the dataset's size, with its splits."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse, run_stage

from farnet.stages.prepare import prepare


def main(argv=None) -> int:
    params, args = parse(__doc__, argv, dataset=True, stage="prepare", raw="data/raw", prepared="data/prepared")
    info = prepare(params, args.dataset, Path(args.raw), Path(args.prepared))
    print(f"prepared {args.dataset} at {tuple(info['input_hw'])}: {info['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
