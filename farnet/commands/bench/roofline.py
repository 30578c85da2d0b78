"""The limit every path is measured against: this machine's memory bandwidth and the network's roofline floor.

The floor of one training step or inference on this machine is, summed over the aten operations the network
runs, the larger of the operation's FLOPs ÷ the conv rate measured in the same run (bf16 or fp32, as its
inputs) and the bytes it moves ÷ the measured bandwidth (docs/design.md §7). Operations and shapes are recorded
by a dispatch mode over one eager run, FLOPs counted by ``torch.utils.flop_counter``'s formulas, bytes as the
tensors each operation reads and writes. Views move nothing; copies, casts and layout changes are a path's
overhead rather than the network's work, so they are left out: a path that avoided every one of them and ran each
operation at the machine's limit would take the floor.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from farnet.core.fastpath import FastPath

# what the floor leaves out: data movement a path adds (layout changes, casts, copies), not the network's work
OVERHEAD_OPS = frozenset({"aten.copy_", "aten._to_copy", "aten.clone", "aten.contiguous", "aten.to"})
# operations that only allocate, or write their output without reading it first
ALLOCATIONS = frozenset({"aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty",
                         "aten.new_empty_strided", "aten.resize_"})
WRITE_ONLY = frozenset({"aten.zero_", "aten.fill_", "aten.zeros", "aten.zeros_like", "aten.ones", "aten.full",
                        "aten.new_zeros", "aten.scalar_tensor", "aten.arange"})
BANDWIDTH_BYTES = 256 * 2**20  # each of the two buffers of the copy: far beyond any cache


def measure_bandwidth(device: torch.device, repeats: int = 5, warmup: int = 2) -> dict:
    """The memory bandwidth of a large copy (256 MiB to 256 MiB, fp32), median after warm-up: bytes read plus
    bytes written per second, on the same cores as the paths."""
    from farnet.commands.bench.measure import sync

    src = torch.ones(BANDWIDTH_BYTES // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    moved = 2 * src.numel() * src.element_size()
    for _ in range(warmup):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"bytes_per_s": moved / statistics.median(times), "times_s": times,
            "method": f"median of {repeats} runs after {warmup} warm-up of a {BANDWIDTH_BYTES // 2**20} MiB fp32 "
                      f"copy (bytes read + written)"}


class OpLog(TorchDispatchMode):
    """Every aten operation run inside the block, with its FLOPs, the bytes it moves and its compute dtype."""

    def __init__(self):
        super().__init__()
        self.ops: list[dict] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append(op_cost(func, args, kwargs, out))
        return out


def op_cost(func, args: tuple, kwargs: dict, out) -> dict:
    """One operation's name, FLOPs, bytes moved (0 for views and allocations) and the dtype of its inputs."""
    name = str(func.overloadpacket)
    packet = func.overloadpacket
    flops = int(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0
    inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    floating = [t.dtype for t in inputs if t.is_floating_point()]
    dtype = "bf16" if torch.bfloat16 in floating else "fp32"
    if getattr(func, "is_view", False) or name in ALLOCATIONS:
        moved = 0
    else:
        written = {id(t) for t in outputs}
        read = 0 if name in WRITE_ONLY else sum(_nbytes(t) for t in _unique(inputs)
                                                 if not (name == "aten.copy_" and id(t) in written))
        moved = read + sum(_nbytes(t) for t in _unique(outputs))
    return {"op": name, "flops": flops, "bytes": moved, "dtype": dtype}


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    seen, kept = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            kept.append(t)
    return kept


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def roofline_floor(ops: list[dict], rates: dict[str, float], bytes_per_s: float, top: int = 8) -> dict:
    """The floor of the operations ``ops`` (:class:`OpLog`): per operation max(FLOPs ÷ rate of its dtype, bytes ÷
    bandwidth), summed over all but the overhead (``OVERHEAD_OPS``).

    Args:
        rates: FLOP/s per compute dtype, ``{"bf16": ..., "fp32": ...}``.

    Returns:
        ``floor_s``, its compute-bound and memory-bound parts, the overhead left out (the bytes it moves and their
        time at the bandwidth), and the ``top`` operations by their share of the floor.
    """
    floor = compute = memory = overhead_s = 0.0
    overhead_bytes, by_op = 0, {}
    for op in ops:
        t_flops = op["flops"] / rates[op["dtype"]] if op["flops"] else 0.0
        t_bytes = op["bytes"] / bytes_per_s
        if op["op"] in OVERHEAD_OPS:
            overhead_bytes += op["bytes"]
            overhead_s += t_bytes
            continue
        t = max(t_flops, t_bytes)
        floor += t
        if t_flops >= t_bytes:
            compute += t
        else:
            memory += t
        by_op[op["op"]] = by_op.get(op["op"], 0.0) + t
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return {"floor_s": floor, "compute_bound_s": compute, "memory_bound_s": memory,
            "overhead_left_out": {"bytes": overhead_bytes, "s_at_bandwidth": overhead_s},
            "ops": len(ops), "flops": sum(op["flops"] for op in ops),
            "top_ops": [{"op": k, "s": s, "share": s / floor if floor else None} for k, s in ranked]}


def network_costs(spec: dict, fast: FastPath) -> dict[str, list[dict]]:
    """The operations of one training step and one inference (:func:`farnet.commands.bench.measure.eager_train_step`
    and :func:`~farnet.commands.bench.measure.eager_inference`) at batch 1 on the eager ``fast`` path, each recorded
    after one warm-up run: ``{"train": ops, "inference": ops}`` (:class:`OpLog`)."""
    from farnet.commands.bench.measure import BenchPath, eager_inference, eager_train_step, make_model, release

    device = torch.device(spec["device"])
    costs = {}
    for what, make in (("train", eager_train_step), ("inference", eager_inference)):
        run = make(make_model(spec, device, BenchPath("costs", fast.precision, fast.channels_last)), fast, spec, 1)
        run()
        with OpLog() as log:
            run()
        costs[what] = log.ops
        del run
    release(device)
    return costs


def flop_totals(costs: dict[str, list[dict]]) -> dict:
    """FLOPs of one image's forward pass and training step, from :func:`network_costs`."""
    return {"forward_per_image": sum(op["flops"] for op in costs["inference"]),
            "train_step_per_image": sum(op["flops"] for op in costs["train"]),
            "method": "torch.utils.flop_counter's formulas over every aten operation of one eager run at batch 1 "
                      "(convolutions and matrix products; a multiply-add counts 2)"}


def floors(costs: dict[str, list[dict]], peak: dict, bandwidth: dict, fast: FastPath) -> dict:
    """The roofline floor of a training step and an inference (:func:`roofline_floor`) at the measured rates."""
    rates = {"bf16": peak["bf16_flops_per_s"], "fp32": peak["fp32_flops_per_s"]}
    return {"path": fast.describe(), "bandwidth": bandwidth, "rates_flops_per_s": rates,
            "train": roofline_floor(costs["train"], rates, bandwidth["bytes_per_s"]),
            "inference": roofline_floor(costs["inference"], rates, bandwidth["bytes_per_s"]),
            "method": __doc__.split("\n\n")[1].replace("\n", " ")}
