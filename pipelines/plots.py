"""DVC stage `plots`: SDR curves, per-landmark errors, overlays, the EWC curve, training curves, ours vs paper.

The EWC curve (Fig. 4) is drawn with the α that Table 3's run was trained with, read from its run info."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse, run_stage

from farnet.report.plots import make_plots


def main(argv=None) -> int:
    _, args = parse(__doc__, argv, params=False, results="results", prepared="data/prepared")
    for path in make_plots(Path(args.results), Path(args.prepared)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
