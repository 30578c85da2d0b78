"""DVC stage `fetch@<dataset>`: the dataset into data/raw/<dataset>, checked against sha256 sums.

Copies from the offline mirror named by FARNET_DATA_MIRROR when it is set, else downloads from the official
source where that is scriptable, else stops with a message saying where to get the data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse, run_stage

from farnet.stages.fetch import fetch


def main(argv=None) -> int:
    params, args = parse(__doc__, argv, dataset=True, raw="data/raw")
    summary = fetch(params, args.dataset, Path(args.raw))
    print(f"fetched {args.dataset}: {summary.get('n_images', '?')} images from {summary.get('source', '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
