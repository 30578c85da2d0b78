"""DVC stage `prepare`: every split decoded once and cached at the network's input size."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse

from farnet.workflow import prepare


def main(argv=None) -> int:
    params, args = parse(__doc__, argv, raw="data/raw", prepared="data/prepared")
    counts = prepare(params, Path(args.raw), Path(args.prepared))
    print(f"prepared {params.data.dataset} at {params.data.input_hw}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
