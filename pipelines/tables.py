"""DVC stage `tables`: the paper's Tables 1-5 and the extra tables, with provenance headers."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse, run_stage

from farnet.report.tables import make_tables


def main(argv=None) -> int:
    _, args = parse(__doc__, argv, params=False, results="results", raw="data/raw")
    for path in make_tables(Path(args.results), Path(args.raw)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
