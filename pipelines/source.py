"""DVC stage `source@<dataset>`: a record of an own dataset's folder (data/sources/<dataset>.json), run at every
`dvc repro`, so that fetch copies the folder again when its CSV or images changed."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse, run_stage

from farnet.core.fileio import write_json
from farnet.stages.source import source_record


def main(argv=None) -> int:
    params, args = parse(__doc__, argv, dataset=True, out="data/sources")
    path = Path(args.out) / f"{args.dataset}.json"
    record = source_record(params, args.dataset)
    write_json(path, record)
    print(f"source of {args.dataset}: " + (record["root"] or "its mirror or official source"))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
