"""What ``farnet bench`` measures and how: the paths, the engine's own step and inference, clocks, memory,
FLOPs and the data path.

Every timing is the median of ``repeats`` runs after ``warmup`` untimed ones, with the device synchronised before
each clock reading. The training step is the engine's :class:`farnet.training.steps.Stepper` (normalisation,
forward, targets, EWC loss over both heads, backward, Adam) and inference is
:func:`farnet.evaluation.loop.predict_landmarks` (upload, forward, argmax decoding, download): the code that
training and evaluation run, not a copy of it.
"""

from __future__ import annotations

import ctypes
import gc
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from farnet.config import LossParams, ModelParams
from farnet.training.engine import TrainOptions, make_loader
from farnet.training.steps import make_stepper
from farnet.core.fastpath import FastPath, resolve


@dataclass(frozen=True)
class BenchPath:
    """One way of running the network: a precision, a memory format and optionally a compiler or graph."""

    name: str
    precision: str  # "fp32" or "bf16"
    channels_last: bool
    compile: bool = False
    cuda_graphs: bool = False

    @property
    def fast(self) -> FastPath:
        return FastPath(self.precision, self.channels_last)


def bench_paths(device: torch.device) -> list[BenchPath]:
    """fp32, the eager fast paths, then torch.compile and (CUDA) CUDA graphs on what ``"auto"`` picks here."""
    auto = resolve("auto", "auto", device)
    paths = [
        BenchPath("fp32", "fp32", False),
        BenchPath("bf16", "bf16", False),
        BenchPath("channels_last", "fp32", True),
        BenchPath("bf16+channels_last", "bf16", True),
        BenchPath(f"compile({auto.describe()})", auto.precision, auto.channels_last, compile=True),
    ]
    if device.type == "cuda":
        paths.append(BenchPath(f"cuda_graphs({auto.describe()})", auto.precision, auto.channels_last,
                               cuda_graphs=True))
    return paths


def path_settings(path: BenchPath) -> dict:
    return {k: v for k, v in asdict(path).items() if k != "name"}


def make_model(spec: dict, device: torch.device, path: BenchPath) -> torch.nn.Module:
    from farnet.models.factory import build_model  # imported here: timm is slow to import, and --help needs none of it

    torch.manual_seed(0)
    model = build_model(ModelParams(backbone=spec["backbone"]), spec["num_landmarks"])
    return model.to(device=device, memory_format=path.fast.memory_format)


def make_inputs(spec: dict, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images (B, 1, H, W) and landmarks (B, K, 2) inside them; timings do not depend on content."""
    h, w = spec["size_hw"]
    g = torch.Generator().manual_seed(batch)
    images = torch.randint(0, 256, (batch, 1, h, w), generator=g, dtype=torch.uint8)
    points = torch.rand(batch, spec["num_landmarks"], 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    return images.to(device), points.to(device)


def eager_train_step(model, fast: FastPath, spec: dict, batch: int) -> Callable[[], None]:
    """The engine's eager step (:func:`path_train_step` on ``"eager"``)."""
    return path_train_step(model, fast, spec, batch, "eager")


def path_train_step(model, fast: FastPath, spec: dict, batch: int, path: str) -> Callable[[], None]:
    """A training step as the engine takes it on ``path`` (:class:`farnet.training.steps.Stepper`: one of
    :data:`farnet.training.steps.STEP_PATHS`), on random inputs; a CUDA graph is warmed up and captured before this returns,
    a compiled step compiles at its first call (time it after a warm-up)."""
    from farnet.training.losses import build_loss

    device = torch.device(spec["device"])
    images, points = make_inputs(spec, batch, device)
    stepper = make_stepper(model.train(), build_loss(LossParams()), fast, device, path, optimizer="adam", lr=1e-4,
                           sigma_px=bench_sigma_px(spec))

    def step() -> None:
        stepper.step(images, points)
        if stepper.pending >= 50:  # the engine reads its losses every 50 steps off the eager path
            stepper.read()

    if path == "graph":
        for _ in range(stepper.warmup_steps + 1):
            step()
    return step


def eager_inference(model, fast: FastPath, spec: dict, batch: int, path: str = "eager") -> Callable[[], None]:
    """The evaluation's inference of a random batch from the host: the model made ready once
    (:func:`farnet.models.interface.inference_network` on ``path``), then
    :func:`farnet.evaluation.loop.predict_network` with argmax decoding. On ``compile`` the first call compiles
    (time it after a warm-up)."""
    from farnet.evaluation.loop import predict_network
    from farnet.models.interface import inference_network

    images = make_inputs(spec, batch, torch.device("cpu"))[0][:, 0].numpy()  # (B, H, W) uint8 on the host
    device = spec["device"]
    network = inference_network(model, device, fast, path)

    def infer() -> None:
        predict_network(network, images, batch_size=batch, device=device, decoders=("argmax",), progress=False)

    return infer


def bench_sigma_px(spec: dict) -> float:
    """σ = 10 px at 800×640 (paper §4.2), scaled with the input width."""
    return 10.0 * spec["size_hw"][1] / 640


def timed(fn: Callable[[], None], spec: dict, device: torch.device, batch: int) -> dict:
    """Median time of ``fn`` after warm-up, with the peak memory of the whole measurement."""
    with PeakMemory(device) as memory:
        for _ in range(spec["warmup"]):
            fn()
        times = []
        for _ in range(spec["repeats"]):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"median_s": median, "times_s": times, "images_per_s": batch / median, "peak_memory_bytes": memory.peak,
            "memory_at_start_bytes": memory.start}


def describe(m: dict) -> str:
    return (f"{m['median_s']:.3f} s ({m['images_per_s']:.2f} img/s), peak memory "
            f"{m['peak_memory_bytes'] / 2**20:.0f} MiB")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free what the last measurement left: unreachable objects first, then (CUDA) the allocator's cache.

    A stepper refers to itself (its step function is its own bound method), so it and the model, optimiser and
    CUDA graph it holds go only when the garbage collector runs; emptying the cache before that frees nothing
    they hold, and the next path would be measured beside them.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# The peak measured in each run: a large 3x3 convolution, channels_last (docs/design.md §7), timed in fp32 and in bf16
PEAK_CONV = {"channels": 256, "size_hw": (200, 160), "kernel": 3}


def measure_conv_peak(device: torch.device, repeats: int = 5, warmup: int = 2) -> dict:
    """The rate the device reaches on a large 3x3 convolution (256 -> 256 channels at 200x160, channels_last,
    batch 1 on CPU and 8 on CUDA), in fp32 and in bf16, timed like the paths (median after warm-up).

    This is the peak every path is measured against: what this machine's convolution kernels deliver on the
    same cores in the same run, not a data-sheet figure.
    """
    import torch.nn.functional as F

    c, (h, w), k = PEAK_CONV["channels"], PEAK_CONV["size_hw"], PEAK_CONV["kernel"]
    batch = 8 if device.type == "cuda" else 1
    flops = 2 * batch * c * c * k * k * h * w
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, w, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, c, k, k, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    result = {"method": f"median of {repeats} runs after {warmup} warm-up of a {k}x{k} convolution {c} -> {c} "
                        f"channels at {h}x{w}, batch {batch}, channels_last, {flops / 1e9:.1f} GFLOP each"}
    with torch.no_grad():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            xi, wi = x.to(dtype), weight.to(dtype)
            for _ in range(warmup):
                F.conv2d(xi, wi, padding=k // 2)
            times = []
            for _ in range(repeats):
                sync(device)
                t0 = time.perf_counter()
                F.conv2d(xi, wi, padding=k // 2)
                sync(device)
                times.append(time.perf_counter() - t0)
            result[f"{name}_flops_per_s"] = flops / statistics.median(times)
            result[f"{name}_times_s"] = times
    return result


# Where a step's time goes: aten ops grouped by what they do (first match wins)
OP_GROUPS = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("batch norm", ("batch_norm",)),
    ("concatenation", ("aten::cat",)),
    ("up-sampling", ("upsample",)),
    ("optimizer (Adam)", ("_foreach", "adam", "addcdiv", "addcmul", "lerp")),
    ("layout and copies", ("copy_", "contiguous", "clone", "aten::to", "_to_copy", "empty_like", "as_strided")),
    ("activations", ("relu", "threshold")),
)


def profile_step(fn: Callable[[], None], device: torch.device, top: int = 15) -> dict:
    """One run of ``fn`` (after the caller's warm-up) under ``torch.profiler``: self time per op group and the
    ``top`` ops, each in seconds and as a share of the total self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "mkldnn" in e.key]
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    times = {e.key: getattr(e, attr) / 1e6 for e in events}
    total = sum(times.values()) or 1.0
    groups: dict[str, float] = {}
    for key, seconds in times.items():
        group = next((name for name, needles in OP_GROUPS if any(n in key.lower() for n in needles)), "other")
        groups[group] = groups.get(group, 0.0) + seconds
    ranked = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    return {"self_time_s": total,
            "groups": {g: {"s": s, "share": s / total} for g, s in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": k, "s": s, "share": s / total} for k, s in ranked],
            "method": f"torch.profiler, one run after warm-up; {attr} of aten ops"}


class PeakMemory:
    """Peak memory during a block: CUDA ``max_memory_allocated``, or the process's resident-set high-water mark
    (``VmHWM``, reset on entry through ``/proc/self/clear_refs``; else ``ru_maxrss`` since the process began).

    On the CPU, memory freed by earlier measurements is first handed back to the system (``gc`` and glibc's
    ``malloc_trim``), so that one path's leftovers do not count as the next one's peak; the resident set at entry
    (the interpreter, the libraries and the model) is recorded as ``start``.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self.start = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = int(torch.cuda.memory_allocated(self.device))
        else:
            gc.collect()
            _malloc_trim()
            _reset_rss_peak()
            self.start = _rss_peak_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = _rss_peak_bytes()


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "peak CUDA memory allocated by tensors (torch.cuda.max_memory_allocated), per measurement"
    if _reset_rss_peak():
        return ("peak resident set of the process (VmHWM, reset before each measurement after freed memory is "
                "returned to the system), includes the interpreter and libraries: see memory_at_start_bytes")
    return "peak resident set of the process since it began (ru_maxrss): not reset between measurements"


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_peak_bytes() -> int:
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_data(cache_dir: Path, device: torch.device, num_workers: int, steps: int,
                 log: Callable[[str], None] = lambda m: None) -> dict:
    """Time the engine's data path (:func:`farnet.training.engine.make_loader`) from a prepared cache: each batch from
    the DataLoader to the device, with nothing else running (what a training step would wait at most)."""
    from farnet.data.cache import load_cache
    from farnet.data.torch_dataset import LandmarkDataset

    cache = load_cache(cache_dir)
    dataset = LandmarkDataset(cache.images, cache.landmarks)
    options = TrainOptions(epochs=1, sigma_px=10.0, batch_size=1, num_workers=num_workers)
    loader, sampler = make_loader(dataset, options, device)
    sampler.set_epoch(0)
    times = []
    batches = iter(loader)
    for _ in range(min(steps, len(loader))):
        sync(device)
        t0 = time.perf_counter()
        images, points, _ = next(batches)
        images.to(device, non_blocking=True), points.to(device, non_blocking=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    del batches
    result = {"cache": str(cache_dir), "input_hw": list(cache.input_hw), "batch_size": 1, "num_workers": num_workers,
              "pin_memory": device.type == "cuda", "batches_timed": len(times),
              "first_batch_s": times[0] if times else None,
              "median_batch_s": statistics.median(times[1:] or times) if times else None,
              "mean_batch_s": statistics.fmean(times) if times else None}
    if times:
        log(f"data path ({cache_dir}, {cache.input_hw[0]}x{cache.input_hw[1]}): median "
            f"{result['median_batch_s'] * 1e3:.2f} ms per batch")
    return result
