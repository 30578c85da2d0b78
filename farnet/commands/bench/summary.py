"""The benchmark report: reference figures, device peaks, ratios, and the JSON and Markdown files.

Each path is compared with our own fp32 eager on the same network in the same run (the authors' way of running
their network), with the authors' implementation on the project's CPU (docs/design.md §7) and with the peak measured in
the same run (:func:`farnet.commands.bench.measure.measure_conv_peak`): the fraction of it each path reaches, and the
floor, FLOPs ÷ that peak. Data-sheet figures (GPUs) and the vector-unit estimate (CPUs) are kept for reference.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from farnet.core import fileio
from farnet.core.provenance import cpu_isa, cpuinfo

# The authors' implementation, fp32 eager, on the project's 2-core AVX-512/bf16 CPU at 800×640 with a tuned
# malloc, as `farnet bench` runs (docs/design.md §7). Measured on that machine only: the ratios mean something there alone.
AUTHORS_CPU_ISA = "avx512-bf16"  # the vector unit of the CPU they were measured on (AMD EPYC, 2 cores)
AUTHORS_CPU_TRAIN_STEP_S = 7.0
AUTHORS_CPU_INFERENCE_S = 2.2
AUTHORS_REFERENCE = ("docs/design.md §7: the authors' implementation, fp32 eager, at 800x640, batch 1, on the project's "
                     "2-core AVX-512 (bf16) CPU with a tuned malloc: about 7.0 s per training step and 2.2 s per "
                     "inference (8 s and 1.5-1.9 s with glibc's defaults; 4.1 s and 1.0 s under bf16 autocast + "
                     "channels_last)")
# docs/design.md §3/§7: the authors' network costs 310.93 GFLOP forward at 800×640, about 930 GFLOP per training step.
AUTHORS_STEP_GFLOP = 930.0
AUTHORS_FORWARD_GFLOP = 310.93
PAPER_SCHEDULE_IMAGES = 150 * 300  # ISBI 2015: 150 training images × 300 epochs (paper §4.2)

# Dense peak TFLOP/s of GPUs (vendor data sheets, no sparsity): bf16 tensor cores, and TF32, which cuDNN uses
# for fp32 convolutions by default in PyTorch. Matched against the device name, first match wins.
GPU_PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "fp32": 378.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 418.0}),
    ("H100", {"bf16": 989.0, "fp32": 495.0}),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    ("H200", {"bf16": 989.0, "fp32": 495.0}),
    ("A100", {"bf16": 312.0, "fp32": 156.0}),
)
SCHEMA_VERSION = 1


def device_peak(device: torch.device, measured: dict, peak_tflops: float | None = None) -> dict:
    """The peak FLOP/s for bf16 and fp32 every path is measured against: ``measured`` in this run
    (:func:`~farnet.commands.bench.measure.measure_conv_peak`), or ``--peak-tflops`` for bf16 when given; the data-sheet or
    estimated figure is kept under ``reference``."""
    reference = listed_peak(device)
    if peak_tflops is not None:
        return {"bf16_flops_per_s": peak_tflops * 1e12, "fp32_flops_per_s": measured["fp32_flops_per_s"],
                "measured": False, "estimate": False, "conv": measured, "reference": reference,
                "source": f"--peak-tflops {peak_tflops} for bf16; fp32 measured in this run"}
    return {"bf16_flops_per_s": measured["bf16_flops_per_s"], "fp32_flops_per_s": measured["fp32_flops_per_s"],
            "measured": True, "estimate": False, "conv": measured, "reference": reference,
            "source": (f"MEASURED in this run: {measured['bf16_flops_per_s'] / 1e9:.0f} GFLOP/s bf16, "
                       f"{measured['fp32_flops_per_s'] / 1e9:.0f} GFLOP/s fp32 ({measured['method']})")}


def listed_peak(device: torch.device) -> dict:
    """A peak from outside the run: a GPU's data sheet, or the CPU's vector-unit estimate."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_TFLOPS:
            if key in name:
                return {"bf16_flops_per_s": peaks["bf16"] * 1e12, "fp32_flops_per_s": peaks["fp32"] * 1e12,
                        "estimate": False,
                        "source": f"data sheet of the {key}: dense bf16 {peaks['bf16']:.0f} TFLOP/s, TF32 "
                                  f"{peaks['fp32']:.0f} TFLOP/s (cuDNN's default for fp32 convolutions)"}
        return {"bf16_flops_per_s": None, "fp32_flops_per_s": None, "estimate": False,
                "source": f"no peak known for {name!r}: pass --peak-tflops for the floor"}
    return cpu_peak_estimate()


def cpu_peak_estimate() -> dict:
    """An ESTIMATE of the CPU's peak: cores × clock × FLOP per cycle per core from its vector units.

    FLOP/cycle/core for fp32: two FMA pipes × vector width × 2; AMD Zen 4 runs AVX-512 on 256-bit units (32),
    Intel AVX-512 server cores have two 512-bit FMA units (64), AVX2 + FMA gives 32. AVX-512 BF16 dot products
    double that for bf16; AMX tiles give about 1024 bf16 FLOP/cycle. The clock is the current one from
    /proc/cpuinfo (turbo and throttling make it approximate).
    """
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = min(cores, torch.get_num_threads())
    ghz = float(info.get("cpu MHz", "0") or 0) / 1000
    amd = "AMD" in info.get("vendor_id", "")
    if "avx512f" in flags:
        fp32 = 32 if amd else 64
        why = "AVX-512 on " + ("256-bit units (AMD)" if amd else "two 512-bit FMA units")
    elif "avx2" in flags and "fma" in flags:
        fp32, why = 32, "AVX2 with two FMA units"
    else:
        fp32, why = 8, "SSE"
    bf16, bf16_why = fp32, "no native bf16 (as fp32)"
    if "amx_bf16" in flags:
        bf16, bf16_why = 1024, "AMX tiles"
    elif "avx512_bf16" in flags:
        bf16, bf16_why = 2 * fp32, "AVX-512 BF16 dot products"
    if ghz <= 0:
        return {"bf16_flops_per_s": None, "fp32_flops_per_s": None, "estimate": True,
                "source": "no clock in /proc/cpuinfo: no peak estimate, no floor"}
    return {"bf16_flops_per_s": cores * ghz * 1e9 * bf16, "fp32_flops_per_s": cores * ghz * 1e9 * fp32,
            "estimate": True,
            "source": f"ESTIMATE: {cores} cores x {ghz:.2f} GHz x {bf16} bf16 ({bf16_why}) / {fp32} fp32 ({why}) "
                      "FLOP per cycle per core; not a measured peak"}


# the plain fast path every other path is compared with: bf16 autocast + channels_last, eager (docs/design.md §7)
PLAIN_FAST = "bf16+channels_last"


def add_ratios(results: dict, flops: dict, peak: dict, device: torch.device, size_hw: tuple[int, int],
               roofline: dict | None = None) -> None:
    """Speed-ups (reference time ÷ this path's time, > 1 is faster), FLOP/s and the floor, in place.

    The floor is the roofline floor measured in the run (:mod:`farnet.commands.bench.roofline`) where given, else
    the FLOPs at the bf16 peak; each path is also compared with plain bf16 + channels_last eager (``PLAIN_FAST``).
    """
    def median(path: dict, what: str, batch: str = "1") -> float | None:
        m = path.get(what, {}).get(batch)
        return m["median_s"] if m else None

    base, plain = results.get("fp32", {}), results.get(PLAIN_FAST, {})
    authors = device.type == "cpu" and tuple(size_hw) == (800, 640) and cpu_isa() == AUTHORS_CPU_ISA
    floor_peak = peak.get("bf16_flops_per_s")
    for path in results.values():
        if path.get("status") == "skipped":
            continue
        per_flop = {"train": flops["train_step_per_image"], "inference": flops["forward_per_image"]}
        for what in ("train", "inference"):
            for batch, m in path.get(what, {}).items():
                m["flops_per_s"] = per_flop[what] * int(batch) / m["median_s"]
                path_peak = peak.get(f"{path['precision']}_flops_per_s") or floor_peak
                m["fraction_of_peak"] = m["flops_per_s"] / path_peak if path_peak else None
        ratios = {}
        for what, reference in (("train", AUTHORS_CPU_TRAIN_STEP_S),
                                ("inference", AUTHORS_CPU_INFERENCE_S)):
            t, t_fp32, t_plain = median(path, what), median(base, what), median(plain, what)
            ratios[f"{what}_speedup_vs_fp32"] = t_fp32 / t if t and t_fp32 else None
            ratios[f"{what}_speedup_vs_plain_fast"] = t_plain / t if t and t_plain else None
            ratios[f"{what}_speedup_vs_authors"] = reference / t if t and authors else None
            if roofline is not None:
                floor = roofline[what]["floor_s"]
            else:
                floor = per_flop[what] / floor_peak if floor_peak else None
            ratios[f"{what}_floor_s"] = floor
            ratios[f"{what}_time_over_floor"] = t / floor if t and floor else None
            best = max(path.get(what, {}).items(), key=lambda kv: kv[1]["images_per_s"], default=None)
            ratios[f"{what}_best_batch"] = int(best[0]) if best else None
            ratios[f"{what}_best_images_per_s"] = best[1]["images_per_s"] if best else None
        best_train = ratios["train_best_images_per_s"]
        ratios["paper_schedule_train_s"] = PAPER_SCHEDULE_IMAGES / best_train if best_train else None
        path["ratios"] = ratios


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpuinfo().get("model name") or "unknown CPU"


def device_slug(device: torch.device) -> str:
    """File name of a device's results: ``cpu-<model>-<vector ISA>`` (CPUs of one name differ: e.g. an EPYC with
    AVX-512 BF16 and one with AVX2 only) or the CUDA device's name, e.g. ``nvidia-h100-80gb-hbm3``."""
    slug = fileio.device_slug(device_name(device))
    return slug if device.type == "cuda" else f"cpu-{slug}-{cpu_isa()}"


def write_report(report: dict, table: str, out: Path) -> None:
    """``out`` (JSON) and the Markdown table beside it, each written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, json.dumps(report, indent=2, default=_json_number) + "\n"),
                       (out.with_suffix(".md"), table)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def _json_number(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {value!r}")


def markdown_table(report: dict) -> str:
    """A short Markdown summary of the report: one row per path."""
    from tabulate import tabulate

    s = report["settings"]
    flops = report["flops"]
    rows = []
    for name, path in report["paths"].items():
        if path.get("status") in ("skipped", "failed", "timeout") and not path.get("train"):
            note = f"{path['status']}: {path.get('reason', '')}"
            rows.append([name, "—", "", "", "", "—", "", "", "", "", "", "", "", "", note])
            continue
        r = path["ratios"]
        train1, infer1 = path["train"].get("1"), path["inference"].get("1")
        rows.append([
            name,
            _num(train1 and train1["median_s"], 3), _ratio(r["train_time_over_floor"]),
            _ratio(r.get("train_speedup_vs_plain_fast")), _ratio(r["train_speedup_vs_fp32"]),
            _num(infer1 and infer1["median_s"], 3), _ratio(r["inference_time_over_floor"]),
            _ratio(r.get("inference_speedup_vs_plain_fast")), _ratio(r["inference_speedup_vs_fp32"]),
            f"{_num(r['train_best_images_per_s'], 2)} (b{r['train_best_batch']})",
            f"{_num(r['inference_best_images_per_s'], 2)} (b{r['inference_best_batch']})",
            _num(train1 and train1["peak_memory_bytes"] / 2**20, 0),
            _rate(train1), _rate(infer1),
            "" if path.get("status") == "ok" else f"{path['status']}: {path.get('reason', '')}",
        ])
    headers = ["path", "train s (b1)", "×floor", f"vs {PLAIN_FAST}", "vs fp32", "infer s (b1)", "×floor",
               f"vs {PLAIN_FAST}", "vs fp32", "train img/s (best b)", "infer img/s (best b)", "train peak MiB",
               "train GFLOP/s (% peak)", "infer GFLOP/s (% peak)", "note"]
    peak = report["peak"]
    lines = [
        f"# farnet bench — {report['device_name']}",
        "",
        f"{report['hardware']}; {report['date']}; commit {report['git_commit']}"
        + ("; **--quick smoke run: not a benchmark**" if report.get("quick") else "")
        + ("; **incomplete: the run stopped before every path was timed**" if not report.get("complete") else ""),
        "",
        (f"{s['backbone']} FARNet, {s['num_landmarks']} landmarks, {s['size_hw'][0]}×{s['size_hw'][1]}; median of "
         f"{s['repeats']} timed runs after {s['warmup']} warm-up; batches {s['batches']}; {s['threads']} threads; "
         f"malloc: {s.get('malloc', 'not recorded')}. "
         f"FLOPs per image: forward {flops['forward_per_image'] / 1e9:.0f} G, training step "
         f"{flops['train_step_per_image'] / 1e9:.0f} G. 'auto' here = {_auto(report)}."),
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
        "",
        (f"×floor: the path's batch-1 time as a multiple of the roofline floor below; vs {PLAIN_FAST} and vs "
         f"fp32: speed-up over those eager paths at batch 1 (> 1× is faster). The JSON also holds the speed-up over "
         f"the authors' implementation (fp32 eager, {AUTHORS_CPU_TRAIN_STEP_S:g} s per step, "
         f"{AUTHORS_CPU_INFERENCE_S:g} s per inference on the project's 2-core {AUTHORS_CPU_ISA} CPU, docs/design.md "
         "§7; given on such a CPU at 800×640 only)."),
        f"Peak: {peak['source']}. Memory: {s['memory']}.",
    ]
    if report.get("roofline"):
        lines.append(_roofline_line(report["roofline"]))
    if report.get("data"):
        d = report["data"]
        lines.append(f"Data path ({d['cache']}, {d['input_hw'][0]}×{d['input_hw'][1]}, {d['num_workers']} workers): "
                     f"median {_num(d['median_batch_s'] and d['median_batch_s'] * 1e3, 2)} ms per batch.")
    return "\n".join(lines) + "\n"


def _roofline_line(roofline: dict) -> str:
    """The limit, in one line: bandwidth and the floor of a training step and an inference, with their parts."""
    parts = []
    for what in ("train", "inference"):
        f = roofline[what]
        parts.append(f"{'training step' if what == 'train' else 'inference'} {f['floor_s']:.3f} s "
                     f"({f['compute_bound_s']:.3f} s compute-bound, {f['memory_bound_s']:.3f} s memory-bound)")
    return (f"Roofline floor ({roofline['path']}, batch 1): {'; '.join(parts)}; memory bandwidth "
            f"{roofline['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s ({roofline['bandwidth']['method']}). Per "
            "operation the larger of FLOPs ÷ the measured conv rate and bytes moved ÷ that bandwidth, summed; copies, "
            "casts and layout changes left out.")


def _auto(report: dict) -> str:
    a = report["auto"]
    return a["precision"] + ("+channels_last" if a["channels_last"] else "")


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _rate(m: dict | None) -> str:
    """Achieved GFLOP/s at batch 1 and its fraction of the peak of the path's precision."""
    if not m:
        return "—"
    fraction = m.get("fraction_of_peak")
    return f"{m['flops_per_s'] / 1e9:.0f}" + (f" ({100 * fraction:.0f} %)" if fraction else "")


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"
