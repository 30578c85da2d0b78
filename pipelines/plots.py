"""DVC stage `plots`: SDR curves, per-landmark errors, overlays, the EWC curve, training curves, ours vs paper."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse

from farnet.reporting import make_plots


def main(argv=None) -> int:
    params, args = parse(__doc__, argv, results="results", prepared="data/prepared")
    for path in make_plots(params.loss.alpha, Path(args.results), Path(args.prepared)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
