"""DVC stage `evaluate@<run>`: the trained model on the run's evaluation splits."""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parse, run_stage

from farnet.core.allocator import tune_malloc


def main(argv=None) -> int:
    from farnet.stages.evaluate import evaluate_run  # torch: imported after tune_malloc() has run

    params, args = parse(__doc__, argv, run=True, stage="evaluate", prepared="data/prepared", models="models", results="results")
    metrics = evaluate_run(params, Path(args.prepared), Path(args.models) / args.run, Path(args.results))
    for split, m in metrics.items():
        if "mre_mm" in m:
            print(f"{args.run} {split}: MRE {m['mre_mm']:.2f} ± {m['sd_mm']:.2f} mm, SDR@2mm {m['sdr']['2.0']:.2f}%")
        else:
            print(f"{args.run} {split}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k != "n_images"))
    return 0


if __name__ == "__main__":
    tune_malloc()  # re-executes once, before torch is imported: see farnet/core/allocator.py
    sys.exit(run_stage(main))
