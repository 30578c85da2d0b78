"""DVC stage `resolve`: each run's and each dataset's own parameters, one file per stage.

`train@<run>`, `evaluate@<run>` and `prepare@<dataset>` depend on these files rather than on whole sections of
params.yaml, so an edit re-runs exactly the stages whose own values it changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse, run_stage

from farnet.stages.resolve import resolve


def main(argv=None) -> int:
    _, args = parse(__doc__, argv, out="resolved")
    written = resolve(Path(args.params), Path(args.out))
    print(f"resolved {len(written)} stage parameter files into {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
