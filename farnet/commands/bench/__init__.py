"""``farnet bench``: how fast the network trains and predicts here, for fp32 and every fast path (docs/design.md §7).

For each path — fp32, bf16 autocast, channels_last, both, torch.compile, and CUDA graphs on CUDA — it times the
engine's own training step (:class:`farnet.training.steps.Stepper`: normalisation, forward, targets, loss,
backward, Adam) and the evaluation's own inference (:func:`farnet.evaluation.loop.predict_landmarks`: upload, forward, argmax,
download) at batch 1 and a few larger batches: the median of ``--repeats`` runs after ``--warmup`` untimed ones,
with the device synchronised before each clock reading. It also records the peak memory of each measurement,
the FLOPs of a step (``torch.utils.flop_counter``) and the FLOP/s achieved, images per second, and — given a
prepared cache — the time the engine's DataLoader takes to deliver a batch to the device.

Each path is compared with our own fp32, with the authors' implementation on the project's CPU (the figures
of docs/design.md §7) and with the floor FLOPs ÷ peak of the device. ``results/benchmarks/<device>.json`` holds every
number; a Markdown table goes beside it. torch.compile runs in a child process with a time limit, since
compiling FARNet on a small CPU takes many minutes; when it fails or runs out of time the JSON records why.
"""

from farnet.commands.bench.command import add_arguments, run, run_benchmark

__all__ = ["add_arguments", "run", "run_benchmark"]
