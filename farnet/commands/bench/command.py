"""The ``farnet bench`` command: options, the run over every path, and the report it writes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from farnet.core import provenance
from farnet.core.allocator import malloc_setting
from farnet.commands.bench.compiled import graphed_inference, graphed_train_step, run_compiled
from farnet.commands.bench.measure import (BenchPath, bench_paths, describe, eager_inference, eager_train_step,
                                           make_model, measure_conv_peak, measure_data, memory_kind, path_settings,
                                           profile_step, release, timed)
from farnet.commands.bench.roofline import floors, flop_totals, measure_bandwidth, network_costs
from farnet.commands.bench.summary import (AUTHORS_CPU_INFERENCE_S, AUTHORS_CPU_ISA, AUTHORS_CPU_TRAIN_STEP_S,
                                           AUTHORS_FORWARD_GFLOP, AUTHORS_REFERENCE, AUTHORS_STEP_GFLOP,
                                           SCHEMA_VERSION, add_ratios, cpu_isa, device_name, device_peak,
                                           device_slug, markdown_table, write_report)
from farnet.core.errors import ConfigError
from farnet.core.fastpath import FastPath, bf16_native, default_device, resolve, tune_backends


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input size (default 800 640, the ISBI protocol; --quick: 160 128)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before timing")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes to time (default: CPU 1 2, CUDA 1 2 4 8)")
    parser.add_argument("--backbone", default="densenet121", help="backbone of the FARNet measured")
    parser.add_argument("--num-landmarks", type=int, default=19)
    parser.add_argument("--paths", nargs="+", default=None,
                        help="only these paths (names as in the table, or: compile, cuda_graphs)")
    parser.add_argument("--device", default=None, help="default: FARNET_DEVICE, else CUDA if available, else CPU")
    parser.add_argument("--cache", type=Path, default=None,
                        help="a prepared cache folder (e.g. data/prepared/isbi2015/train): time the data path")
    parser.add_argument("--data-steps", type=int, default=30, help="batches to time on the data path")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers on the data path")
    parser.add_argument("--compile-timeout", type=float, default=1200.0,
                        help="seconds torch.compile (compilation and its timings) may take before it is given up")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's bf16 peak in TFLOP/s for the fractions and the floor (default: measured "
                             "in the same run on a large 3x3 convolution)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one batch-1 training step and inference per eager path (where the time goes)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 160x128, 1 warm-up, 2 repeats, batches 1 2, no torch.compile")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file to write (default results/benchmarks/<device>.json); the table goes beside "
                             "it as .md")


def run(args: argparse.Namespace) -> int:
    settings = bench_settings(args)
    out = args.out or Path("results/benchmarks") / f"{device_slug(settings.device)}.json"
    report = run_benchmark(settings, log=lambda message: print(message, flush=True),
                           save=lambda partial: write_report(partial, markdown_table(partial), out))
    print(markdown_table(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


@dataclass(frozen=True)
class BenchSettings:
    """What ``farnet bench`` measures and how (the options of :func:`add_arguments`)."""

    device: torch.device
    size_hw: tuple[int, int]
    batches: tuple[int, ...]
    warmup: int  # untimed runs before each measurement
    repeats: int  # timed runs per measurement, the median reported
    backbone: str = "densenet121"
    num_landmarks: int = 19
    paths: list[BenchPath | tuple[str, str]] | None = None  # (name, reason): skipped; None: every path here
    cache: Path | None = None  # a prepared cache: time the data path on it
    data_steps: int = 30
    num_workers: int = 0
    compile_timeout_s: float = 1200.0
    peak_tflops: float | None = None  # bf16 peak in TFLOP/s (None: measured in the same run)
    quick: bool = False
    profile: bool = False

    def spec(self) -> dict:
        """The settings the measurements read (and the report keeps), as a plain dict for child processes."""
        return {"device": str(self.device), "size_hw": list(self.size_hw), "batches": list(self.batches),
                "warmup": self.warmup, "repeats": self.repeats, "backbone": self.backbone,
                "num_landmarks": self.num_landmarks, "threads": torch.get_num_threads(), "profile": self.profile}


def bench_settings(args: argparse.Namespace) -> BenchSettings:
    """The settings the options ask for, with each default for the device and ``--quick``.

    Raises:
        ConfigError: a size, count or path name the benchmark cannot take.
    """
    device = torch.device(args.device) if args.device else default_device()
    size_hw = tuple(args.size) if args.size else ((160, 128) if args.quick else (800, 640))
    if any(v <= 0 or v % 32 for v in size_hw):
        raise ConfigError(f"--size {size_hw[0]} {size_hw[1]}: both must be positive multiples of 32")
    on_cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (1 if args.quick or not on_cuda else 5)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else (20 if on_cuda else 3))
    batches = args.batches or ([1, 2] if args.quick or not on_cuda else [1, 2, 4, 8])
    if warmup < 0 or repeats < 1 or any(b < 1 for b in batches):
        raise ConfigError("--warmup must be >= 0, --repeats and --batches >= 1")
    paths = select_paths(bench_paths(device), args.paths, quick=args.quick, bf16_native=bf16_native(device))
    return BenchSettings(device=device, size_hw=size_hw, batches=tuple(sorted(set(batches))), warmup=warmup,
                         repeats=repeats, backbone=args.backbone, num_landmarks=args.num_landmarks, paths=paths,
                         cache=args.cache, data_steps=args.data_steps, num_workers=args.num_workers,
                         compile_timeout_s=args.compile_timeout, peak_tflops=args.peak_tflops, quick=args.quick,
                         profile=args.profile)


def select_paths(paths: list[BenchPath], wanted: list[str] | None, quick: bool,
                 bf16_native: bool = True) -> list[BenchPath | tuple[str, str]]:
    """The paths to run; a path left out stays in the list as (name, reason), to be recorded as skipped.

    By default --quick leaves out torch.compile, and a CPU without native bf16 leaves out the bf16 paths (oneDNN
    emulates bf16 there, some ten times slower than fp32: minutes per step at 800x640, and no fast path). A path
    named in ``wanted`` always runs.
    """
    if wanted is None:
        chosen = []
        for p in paths:
            if quick and p.compile:
                chosen.append((p.name, "--quick: torch.compile takes minutes"))
            elif p.precision == "bf16" and not bf16_native:
                chosen.append((p.name, "no native bf16 on this device (emulated: see the measured peak); "
                                       "name it in --paths to time it anyway"))
            else:
                chosen.append(p)
        return chosen
    chosen = []
    for name in wanted:
        match = [p for p in paths if p.name == name or (name == "compile" and p.compile)
                 or (name == "cuda_graphs" and p.cuda_graphs)]
        if not match:
            raise ConfigError(f"--paths {name!r} is not one of {', '.join(p.name for p in paths)}")
        chosen.extend(m for m in match if m not in chosen)
    return chosen


def run_benchmark(settings: BenchSettings, *, log: Callable[[str], None] = lambda message: None,
                  save: Callable[[dict], None] = lambda report: None) -> dict:
    """Time every path and return the report (the JSON document ``farnet bench`` writes); ``save`` is called
    with the report so far after each path and at the end."""
    device, size_hw = settings.device, settings.size_hw
    tune_backends(device)
    paths = bench_paths(device) if settings.paths is None else settings.paths
    spec = settings.spec()
    peak = device_peak(device, measure_conv_peak(device, repeats=2 if settings.quick else 5), settings.peak_tflops)
    auto = resolve("auto", "auto", device)
    log(f"farnet bench on {device_name(device)}: {size_hw[0]}x{size_hw[1]}, batches {list(settings.batches)}, "
        f"{settings.warmup} warm-up + {settings.repeats} timed runs; 'auto' here = {auto.describe()}")
    log(f"peak: {peak['source']}")
    bandwidth = measure_bandwidth(device, repeats=2 if settings.quick else 5)
    costs = network_costs(spec, auto)
    flops = flop_totals(costs)
    roofline = floors(costs, peak, bandwidth, auto)
    log(f"FLOPs per image: forward {flops['forward_per_image'] / 1e9:.1f} G, "
        f"training step {flops['train_step_per_image'] / 1e9:.1f} G")
    log(f"memory bandwidth: {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s; roofline floor on this machine "
        f"({auto.describe()}): training step {roofline['train']['floor_s']:.3f} s, "
        f"inference {roofline['inference']['floor_s']:.3f} s")
    report = _report_head(settings, spec, auto, flops, peak)
    report["roofline"] = roofline
    for path in paths:
        if isinstance(path, tuple):  # left out: recorded with the reason
            name, reason = path
            report["paths"][name] = {"status": "skipped", "reason": reason}
            continue
        report["paths"][path.name] = _measure(path, spec, settings, log)
        add_ratios(report["paths"], flops, peak, device, size_hw, roofline)
        save(report)  # a long CPU run that is killed keeps the paths it finished
    if settings.cache is not None:
        report["data"] = measure_data(settings.cache, device, settings.num_workers, settings.data_steps, log)
    report["complete"] = True
    save(report)
    return report


def _measure(path: BenchPath, spec: dict, settings: BenchSettings, log: Callable[[str], None]) -> dict:
    """One path's entry of the report: compiled and timed in a child process, or timed here."""
    log(f"-- {path.name}")
    if path.compile:
        return run_compiled(path, spec, settings.compile_timeout_s, log)
    return measure_path(path, spec, log)


def _report_head(settings: BenchSettings, spec: dict, auto: FastPath, flops: dict, peak: dict) -> dict:
    """The report before any path has run: how, where and against what it measures."""
    device = settings.device
    return {
        "schema": SCHEMA_VERSION,
        "device": device_slug(device),
        "device_name": device_name(device),
        "hardware": provenance.hardware_description(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": provenance.code_commit(),
        "quick": settings.quick,
        "settings": {**spec, "memory": memory_kind(device), "malloc": malloc_setting(),
                     "timing": "median of the timed runs after the warm-up; device synchronised before each clock "
                               "reading. train = farnet.training.steps.Stepper (Adam, EWC loss, both heads); "
                               "inference = farnet.evaluation.loop.predict_landmarks (argmax decoding), from host uint8 "
                               "images to host landmarks"},
        "auto": {"precision": auto.precision, "channels_last": auto.channels_last},
        "flops": flops,
        "peak": peak,
        "reference": {"authors_cpu_train_step_s": AUTHORS_CPU_TRAIN_STEP_S,
                      "authors_cpu_inference_s": AUTHORS_CPU_INFERENCE_S,
                      "authors_step_gflop": AUTHORS_STEP_GFLOP, "authors_forward_gflop": AUTHORS_FORWARD_GFLOP,
                      "source": AUTHORS_REFERENCE,
                      "applies": device.type == "cpu" and cpu_isa() == AUTHORS_CPU_ISA,
                      "note": "ratios to the authors' figures are given only on a CPU like the one they were "
                              f"measured on ({AUTHORS_CPU_ISA}, 2 cores) at 800x640: they mean something only there"},
        "paths": {},
        "data": None,
        "complete": False,  # True once every path has run: a report saved on the way says so
    }


def measure_path(path: BenchPath, spec: dict, log: Callable[[str], None] = lambda m: None) -> dict:
    """Train-step and inference timings of one eager (or CUDA-graph) path at every batch size of ``spec``."""
    device = torch.device(spec["device"])
    entry = {"status": "ok", **path_settings(path), "train": {}, "inference": {}}
    try:
        makers = {"train": graphed_train_step if path.cuda_graphs else eager_train_step,
                  "inference": graphed_inference if path.cuda_graphs else eager_inference}
        for batch in spec["batches"]:
            for kind, make in makers.items():  # a fresh network for each, as the engine and evaluation have
                run = make(make_model(spec, device, path), path.fast, spec, batch)
                entry[kind][str(batch)] = timed(run, spec, device, batch)
                log(f"   {kind:<9} batch {batch}: {describe(entry[kind][str(batch)])}")
                if spec.get("profile") and batch == 1 and not path.cuda_graphs:
                    entry[f"profile_{kind}"] = profile_step(run, device)
                    log(f"   {kind} profile: " + _shares(entry[f"profile_{kind}"]))
                del run
    # one failing path (e.g. out of memory at a large batch) must not lose the others
    except Exception as exc:  # noqa: BLE001
        entry.update(status="failed" if not entry["train"] else "partial", reason=f"{type(exc).__name__}: {exc}")
        log(f"   {entry['status']}: {entry['reason']}")
    release(device)
    return entry


def _shares(profile: dict) -> str:
    return ", ".join(f"{g} {100 * v['share']:.0f} %" for g, v in profile["groups"].items())
