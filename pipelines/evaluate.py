"""DVC stage `evaluate`: the trained model on the test splits; metrics, per-landmark errors, predictions."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse

from farnet.workflow import evaluate_model


def main(argv=None) -> int:
    params, args = parse(__doc__, argv, prepared="data/prepared", model_dir="models/farnet", raw="data/raw",
                         results="results")
    metrics = evaluate_model(params, Path(args.prepared), Path(args.model_dir), Path(args.raw), Path(args.results))
    for split, m in metrics.items():
        print(f"{split}: MRE {m['mre_mm']:.2f} ± {m['sd_mm']:.2f} mm, SDR@2mm {m['sdr']['2.0']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
