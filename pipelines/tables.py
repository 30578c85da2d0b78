"""DVC stage `tables`: the paper's tables regenerated from our metrics, with provenance headers."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse

from farnet.workflow import make_tables


def main(argv=None) -> int:
    _, args = parse(__doc__, argv, results="results")
    for path in make_tables(Path(args.results)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
