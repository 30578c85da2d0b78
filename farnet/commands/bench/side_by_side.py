"""What ``farnet replicate`` measures on its device besides the run: the step paths before the long run picks one,
the batch sizes of the trained model, and training processes sharing the device.

- :func:`time_step_paths`: a training step of the run's own network on each path of :data:`farnet.training.steps.STEP_PATHS`
  asked for (a fresh model each, at batch 1), with what building the path took (capture, compilation); the
  fastest that worked is the path the run trains on (:func:`fastest_path`). torch.compile comes last, in a child
  process limited to the time it is given (:func:`farnet.commands.bench.compiled.run_compiled`): a compilation
  can take many minutes, and the other paths' results must not wait for it.
- :func:`batch_sweep`: a training step (on the run's path) and an inference at each batch size, timed as
  ``farnet bench`` times them; the best batch is the one with the most images per second. On CUDA the inference
  is also timed as a CUDA graph at batch 1 and at its best batch (each training path's batch-1 step is in
  :func:`time_step_paths`' results).
- :func:`side_by_side`: 1, 4, 8 … training processes started together on one device (each a run of
  :data:`SIDE_BY_SIDE_RUNS` on the carry's data, through the engine's data path and step), each timing its
  steps after a warm-up and a barrier; their summed step rate is what ``dvc queue start -j N`` gets from one GPU
  when the runs are at batch 1.

Under a deadline (``time_left``, seconds a phase may still take) a measurement that would not fit is recorded
as skipped with the reason, and each batch size and each side-by-side round is handed to ``on_progress`` /
``on_round`` as soon as it is measured, so the caller can write it at once. Every function returns plain
JSON-able dicts; one that fails records why instead of raising, so a single `farnet replicate` command on a GPU
node keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from farnet.commands.bench.compiled import run_compiled
from farnet.commands.bench.measure import (BenchPath, PeakMemory, describe, eager_inference, path_train_step, release,
                                           sync, timed)
from farnet.config import Params
from farnet.core.fastpath import FastPath, tune_backends
from farnet.training.steps import STEP_PATHS

__all__ = ["SIDE_BY_SIDE_RUNS", "batch_sweep", "fastest_path", "side_by_side", "time_step_paths"]

#: the runs side-by-side processes train, in this order: Table 3's, then Table 2's ablations (all on ISBI 2015)
SIDE_BY_SIDE_RUNS = ("farnet", "msfa_fr", "msfa", "msfa_add", "msfa_fr_naive", "msfa_fr_aw", "fpn", "unet")
#: a path must be this much faster than an earlier one of STEP_PATHS to be chosen over it (timing noise)
CHOICE_MARGIN = 0.03
#: torch.compile's timing is skipped when it would get less than this (compiling the network takes longer)
MIN_COMPILE_S = 30.0
#: a side-by-side round is skipped when less than this is left (each process imports torch, builds and warms up)
MIN_ROUND_S = 30.0
#: lines of a failed side-by-side process's stderr kept in the record
STDERR_TAIL_LINES = 20

TimeLeft = Callable[[], "float | None"]  # seconds a phase may still take; None: no deadline


def _spec(params: Params, num_landmarks: int, device: torch.device, warmup: int, repeats: int) -> dict:
    return {"device": str(device), "size_hw": tuple(params.input_hw), "num_landmarks": num_landmarks,
            "warmup": warmup, "repeats": repeats}


def _fresh_model(params: Params, num_landmarks: int, device: torch.device, fast: FastPath) -> torch.nn.Module:
    from farnet.models.factory import build_model  # timm: imported where a network is built

    torch.manual_seed(params.seed)
    return build_model(params.model, num_landmarks).to(device=device, memory_format=fast.memory_format)


def time_step_paths(params: Params, num_landmarks: int, device: torch.device, fast: FastPath,
                    paths: Sequence[str], steps: int, warmup: int = 5,
                    log: Callable[[str], None] = lambda m: None, *,
                    compile_limit_s: Callable[[], float] = lambda: 600.0) -> dict:
    """The run's training step on each of ``paths`` at batch 1: ``step_s`` (mean of ``steps`` steps run back to
    back, the device synchronised only before and after, as the engine runs them) and ``build_s`` (the warm-up
    steps, with the capture or the compilation). A path that fails is recorded with its reason.

    The paths run in the order of ``STEP_PATHS``, torch.compile last and in a child process limited to
    ``compile_limit_s()`` seconds, asked when its turn comes (so a deadline gives it what the others left);
    under :data:`MIN_COMPILE_S` it is skipped.
    """
    results = {path: {"status": "failed", "reason": f"not one of {', '.join(STEP_PATHS)}"}
               for path in paths if path not in STEP_PATHS}
    for path in (p for p in STEP_PATHS if p in paths and p != "compile"):
        try:
            results[path] = _measure_path(params, num_landmarks, device, fast, path, steps, warmup)
            log(f"step path {path}: {1000 * results[path]['step_s']:.2f} ms per step (build and warm-up "
                f"{results[path]['build_s']:.1f} s)")
        except Exception as exc:  # noqa: BLE001 - one failing path (a capture) must not lose the others
            results[path] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            log(f"step path {path}: failed: {results[path]['reason']}")
        finally:
            release(device)
    if "compile" in paths:
        results["compile"] = _time_compiled_path(params, num_landmarks, device, fast, steps, warmup,
                                                 compile_limit_s(), log)
    return results


def _measure_path(params: Params, num_landmarks: int, device: torch.device, fast: FastPath, path: str, steps: int,
                  warmup: int) -> dict:
    """One path's step timing on a fresh model (:func:`time_step_paths`); raises what the path raises."""
    model = _fresh_model(params, num_landmarks, device, fast)
    spec = _spec(params, num_landmarks, device, warmup, steps)
    with PeakMemory(device) as memory:
        sync(device)
        t0 = time.perf_counter()
        step = path_train_step(model, fast, spec, 1, path)
        for _ in range(warmup):
            step()
        sync(device)
        t1 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
    step_s = (time.perf_counter() - t1) / steps
    return {"status": "ok", "step_s": step_s, "steps": steps, "build_s": round(t1 - t0, 2),
            "peak_memory_bytes": memory.peak}


def _time_compiled_path(params: Params, num_landmarks: int, device: torch.device, fast: FastPath, steps: int,
                        warmup: int, limit_s: float, log: Callable[[str], None]) -> dict:
    """The compile path's timing (:func:`_measure_path`) in a child process limited to ``limit_s`` seconds."""
    if limit_s < MIN_COMPILE_S:
        reason = (f"skipped: {max(0.0, limit_s):.0f} s left for it, under the {MIN_COMPILE_S:.0f} s a compilation "
                  "is given at least")
        log(f"step path compile: {reason}")
        return {"status": "skipped", "reason": reason}
    log(f"step path compile: in a child process, limited to {limit_s:.0f} s")
    spec = {"device": str(device), "params": params, "num_landmarks": num_landmarks, "steps": steps,
            "warmup": warmup}
    path = BenchPath("compile", fast.precision, fast.channels_last, compile=True)
    entry = run_compiled(path, spec, limit_s, log, worker=_compile_path_worker)
    measured = entry["train"].get("1")
    if entry["status"] == "ok" and measured:
        log(f"step path compile: {1000 * measured['step_s']:.2f} ms per step (compilation and warm-up "
            f"{measured['build_s']:.1f} s)")
        return {k: measured[k] for k in ("status", "step_s", "steps", "build_s", "peak_memory_bytes")} | {
            "limit_s": round(limit_s, 1)}
    if entry["status"] in ("timeout", "partial"):
        return {"status": "timeout", "reason": f"torch.compile: not compiled and timed within the {limit_s:.0f} s "
                                               "it was given (the time left)", "limit_s": round(limit_s, 1)}
    return {"status": "failed", "reason": entry.get("reason", "torch.compile: no timing came back")}


def _compile_path_worker(path: BenchPath, spec: dict, messages) -> None:
    """Child process of :func:`_time_compiled_path`: the compile path's timing, reported as
    :func:`~farnet.commands.bench.compiled.run_compiled` reads it (a ``train`` measurement at batch 1)."""
    try:
        device = torch.device(spec["device"])
        tune_backends(device)
        measured = _measure_path(spec["params"], spec["num_landmarks"], device, path.fast, "compile", spec["steps"],
                                 spec["warmup"])
        messages.put(("compile_s", "train", 1, measured["build_s"]))
        messages.put(("train", 1, {**measured, "median_s": measured["step_s"],
                                   "images_per_s": 1 / measured["step_s"]}))
        messages.put(("done",))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which records it
        messages.put(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))


def fastest_path(results: dict) -> str:
    """The path to train on: the fastest that worked, an earlier one of ``STEP_PATHS`` unless a later one is
    faster by more than :data:`CHOICE_MARGIN`; ``eager`` when none worked."""
    best = None
    for path in STEP_PATHS:
        entry = results.get(path, {})
        if entry.get("status") == "ok" and (best is None
                                            or entry["step_s"] < results[best]["step_s"] * (1 - CHOICE_MARGIN)):
            best = path
    return best or "eager"


def batch_sweep(model: torch.nn.Module, params: Params, num_landmarks: int, device: torch.device, fast: FastPath,
                path: str, batches: Sequence[int], repeats: int, log: Callable[[str], None] = lambda m: None, *,
                time_left: TimeLeft = lambda: None, on_progress: Callable[[dict], None] = lambda out: None) -> dict:
    """A training step on ``path`` and an inference (upload, forward, argmax, download) at each batch size, on
    ``model`` (the trained one: the steps change its weights in memory, so time them after it is saved).

    A measurement that the time left cannot hold (its smaller batch's time scaled up, :func:`_expected_s`) is
    recorded as skipped; ``on_progress`` gets the results after each batch size."""
    warmup = 5 if device.type == "cuda" else 1
    spec = _spec(params, num_landmarks, device, warmup, repeats)
    out: dict = {"path": path, "train_step": {}, "inference": {}, "best_batch_train_step": None,
                 "best_batch_inference": None}
    for batch in batches:
        for what, make in (("inference", lambda b: eager_inference(model, fast, spec, b)),
                           ("train_step", lambda b: path_train_step(model, fast, spec, b, path))):
            out[what][str(batch)] = _measure_batch(make, what, batch, spec, device, out[what], time_left, log)
        _best_batches(out)
        on_progress(out)
    if device.type == "cuda":  # the inference's other path: normalisation, forward and argmax in a CUDA graph
        from farnet.commands.bench.compiled import graphed_inference

        out["inference_graph"] = {}
        for batch in sorted({1, out["best_batch_inference"] or 1}):
            out["inference_graph"][str(batch)] = _measure_batch(
                lambda b: graphed_inference(model, fast, spec, b), "inference (CUDA graph)", batch, spec, device,
                out["inference_graph"], time_left, log)
            on_progress(out)
    return out


def _measure_batch(make: Callable[[int], Callable[[], object]], what: str, batch: int, spec: dict,
                   device: torch.device, done: dict, time_left: TimeLeft, log: Callable[[str], None]) -> dict:
    """One measurement of :func:`batch_sweep` (``done``: the same kind's, at the batches measured so far), or
    why it was skipped or failed."""
    need, left = _expected_s(done, batch, spec), time_left()
    if left is not None and (left <= 0 or need > left):
        reason = (f"skipped: {max(0.0, left):.0f} s left of the deadline"
                  + (f", about {need:.0f} s needed" if need else ""))
        log(f"{what} batch {batch}: {reason}")
        return {"status": "skipped", "reason": reason}
    try:
        measured = timed(make(batch), spec, device, batch)
        log(f"{what} batch {batch}: {describe(measured)}")
        return measured
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a large batch: keep the smaller ones
        log(f"{what} batch {batch}: failed: {type(exc).__name__}: {exc}")
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        release(device)


def _expected_s(done: dict, batch: int, spec: dict) -> float:
    """What measuring ``batch`` should take: the largest smaller batch measured, its median scaled by the batch
    ratio, over the warm-up and the repeats (0 when nothing is measured yet: no estimate, it runs)."""
    measured = [int(b) for b, m in done.items() if "median_s" in m and int(b) <= batch]
    if not measured:
        return 0.0
    base = max(measured)
    return done[str(base)]["median_s"] * batch / base * (spec["warmup"] + spec["repeats"])


def _best_batches(out: dict) -> None:
    """Set ``best_batch_<what>``: the batch with the most images per second so far (None when none worked)."""
    for what in ("train_step", "inference"):
        ok = {b: m for b, m in out[what].items() if "images_per_s" in m}
        out[f"best_batch_{what}"] = int(max(ok, key=lambda b: ok[b]["images_per_s"])) if ok else None


def side_by_side(counts: Sequence[int], *, carry_hw: tuple[int, int], prepared_root: Path, work: Path,
                 params_path: str | Path, input_hw: tuple[int, int] | None, device: torch.device, path: str,
                 steps: int, warmup: int, timeout_s: float, log: Callable[[str], None] = lambda m: None,
                 time_left: TimeLeft = lambda: None, on_round: Callable[[dict], None] = lambda results: None) -> dict:
    """Step rates of ``n`` training processes sharing ``device``, for each ``n`` of ``counts`` (module text).

    Each round is limited to the time left of the deadline, and skipped when that is under
    :data:`MIN_ROUND_S` (without a deadline: limited to ``timeout_s``); ``on_round`` gets the results after each
    round."""
    results: dict = {"path": path, "steps_per_process": steps, "warmup_steps": warmup, "runs": {},
                     "method": ("each process: the run's network, data and augmentation through the engine's loader "
                                f"and step path ({path}), batch 1; {warmup} warm-up steps, then a barrier (all "
                                f"processes ready), then {steps} steps timed (device synchronised at both ends). "
                                "total_steps_per_s = all timed steps / (last end - first start)")}
    job = {"params": str(params_path), "carry_hw": list(carry_hw),
           "input_hw": None if input_hw is None else list(input_hw), "prepared_root": str(prepared_root),
           "device": str(device), "path": path, "steps": steps, "warmup": warmup}
    single = None
    for n in counts:
        left = time_left()
        if left is not None and left < MIN_ROUND_S:
            entry = {"processes": n, "status": "skipped",
                     "reason": f"skipped: {max(0.0, left):.0f} s left of the deadline, under the "
                               f"{MIN_ROUND_S:.0f} s a round is given at least"}
            log(f"side by side, {n} process(es): {entry['reason']}")
        else:
            entry = _round(n, job, work / f"side-by-side-{n}", timeout_s if left is None else left)
            if n == 1 and entry["completed"] == 1:
                single = entry["total_steps_per_s"]
            if single and entry["completed"] == n:
                entry["speedup_vs_1"] = round(entry["total_steps_per_s"] / single, 2)
            log(f"side by side, {n} process(es): " + (f"{entry['total_steps_per_s']} steps/s in all"
                                                        if entry["completed"] else "no result")
                + (f"; errors: {entry['errors']}" if "errors" in entry else ""))
        results["runs"][str(n)] = entry
        on_round(results)
    return results


def _round(n: int, job: dict, folder: Path, limit_s: float) -> dict:
    """One side-by-side round of ``n`` processes, each given ``limit_s`` seconds; each process's stderr goes to a
    file in ``folder`` (a pipe read after another process's would stall a process that writes much before the
    barrier), of which a failed process's last lines are kept."""
    shutil.rmtree(folder, ignore_errors=True)  # an earlier command's ready and result files would count
    folder.mkdir(parents=True)
    runs = [SIDE_BY_SIDE_RUNS[i % len(SIDE_BY_SIDE_RUNS)] for i in range(n)]
    procs = []
    for i, run in enumerate(runs):
        one = {**job, "index": i, "n": n, "run": run, "folder": str(folder), "barrier_timeout_s": limit_s}
        with open(folder / f"stderr-{i}.txt", "wb") as stderr:
            procs.append(subprocess.Popen([sys.executable, "-m", "farnet.commands.bench.side_by_side",
                                           json.dumps(one)], stdout=subprocess.DEVNULL, stderr=stderr))
    ends = time.monotonic() + limit_s
    errors, tails = [], {}
    for i, proc in enumerate(procs):
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, ends - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
        if proc.returncode != 0:
            tail = _tail(folder / f"stderr-{i}.txt")
            errors.append(f"process {i} ({runs[i]}): " + (f"no result within {limit_s:.0f} s" if timed_out else
                                                           tail[-1] if tail else f"exit {proc.returncode}"))
            tails[str(i)] = tail
    done = [json.loads(p.read_text()) for p in sorted(folder.glob("result-*.json"))]
    entry: dict = {"processes": n, "runs": runs, "completed": len(done), "limit_s": round(limit_s, 1)}
    if errors:
        entry.update(errors=errors, stderr_tail=tails)
    if done:
        span = max(d["t1"] for d in done) - min(d["t0"] for d in done)
        entry.update(per_process_steps_per_s=[round(d["steps"] / (d["t1"] - d["t0"]), 2) for d in done],
                     total_steps_per_s=round(sum(d["steps"] for d in done) / span, 2), span_s=round(span, 2))
    return entry


def _tail(path: Path) -> list[str]:
    """The last :data:`STDERR_TAIL_LINES` non-empty lines of a process's stderr file."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-STDERR_TAIL_LINES:]


def _worker(job: dict) -> None:
    """One side-by-side process: train ``job['steps']`` steps of ``job['run']`` after a warm-up and a barrier."""
    from farnet.data.torch_dataset import LandmarkDataset
    from farnet.data.views import load_split
    from farnet.training.engine import TrainOptions, make_loader
    from farnet.core.fastpath import resolve, tune_backends
    from farnet.training.losses import build_loss
    from farnet.commands.protocol import replication_params
    from farnet.training.steps import make_stepper

    device = torch.device(job["device"])
    params, _ = replication_params(job["params"], job["run"], tuple(job["carry_hw"]),
                                   None if job["input_hw"] is None else tuple(job["input_hw"]))
    fast = resolve(params.train.precision, params.train.channels_last, device)
    tune_backends(device)
    view = load_split(Path(job["prepared_root"]) / params.data.dataset, "train", params.input_hw)
    dataset = LandmarkDataset(view.images, view.landmarks, augment=params.dataset.augment, seed=params.seed)
    model = _fresh_model(params, view.landmarks.shape[1], device, fast).train()
    options = TrainOptions.from_params(params)
    stepper = make_stepper(model, build_loss(params.loss), fast, device, job["path"], optimizer=options.optimizer,
                           lr=options.lr, sigma_px=options.sigma_px)
    loader, _ = make_loader(dataset, options, device)

    def batches():
        while True:
            yield from loader

    it = batches()

    def step() -> None:
        images, points, _ = next(it)
        stepper.step(images.to(device, non_blocking=True), points.to(device, non_blocking=True))

    for _ in range(job["warmup"]):
        step()
    stepper.read()
    folder = Path(job["folder"])
    (folder / f"ready-{job['index']}").touch()
    deadline = time.monotonic() + job["barrier_timeout_s"]
    while len(list(folder.glob("ready-*"))) < job["n"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the other processes did not get ready in time")
        time.sleep(0.01)
    sync(device)
    t0 = time.time()
    for i in range(job["steps"]):
        step()
        if stepper.pending >= 50:
            stepper.read()
    stepper.read()
    sync(device)
    t1 = time.time()
    result = {"run": job["run"], "steps": job["steps"], "t0": t0, "t1": t1}
    (folder / f"result-{job['index']}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one side-by-side training process (farnet replicate)")
    parser.add_argument("job", help="the job, as JSON")
    _worker(json.loads(parser.parse_args().job))
