"""What ``farnet replicate`` measures on its device besides the run: the step paths before the long run picks one,
the batch sizes of the trained model, and training processes sharing the device.

- :func:`time_step_paths`: a training step of the run's own network on each path of :data:`farnet.training.steps.STEP_PATHS`
  asked for (a fresh model each, at batch 1), with what building the path took (capture, compilation); the
  fastest that worked is the path the run trains on (:func:`fastest_path`).
- :func:`batch_sweep`: a training step (on the run's path) and an inference at each batch size, timed as
  ``farnet bench`` times them; the best batch is the one with the most images per second. On CUDA the inference
  is also timed as a CUDA graph at batch 1 and at its best batch (each training path's batch-1 step is in
  :func:`time_step_paths`' results).
- :func:`side_by_side`: 1, 4, 8 … training processes started together on one device (each a run of
  :data:`SIDE_BY_SIDE_RUNS` on the carry's data, through the engine's data path and step), each timing its
  steps after a warm-up and a barrier; their summed step rate is what ``dvc queue start -j N`` gets from one GPU
  when the runs are at batch 1.

Every function returns plain JSON-able dicts; one that fails records why instead of raising, so a single `farnet replicate`
command on a GPU node keeps what it measured.
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

from farnet.commands.bench.measure import describe, eager_inference, path_train_step, release, sync, timed
from farnet.config import Params
from farnet.core.fastpath import FastPath
from farnet.training.steps import STEP_PATHS

__all__ = ["SIDE_BY_SIDE_RUNS", "batch_sweep", "fastest_path", "side_by_side", "time_step_paths"]

#: the runs side-by-side processes train, in this order: Table 3's, then Table 2's ablations (all on ISBI 2015)
SIDE_BY_SIDE_RUNS = ("farnet", "msfa_fr", "msfa", "msfa_add", "msfa_fr_naive", "msfa_fr_aw", "fpn", "unet")
#: a path must be this much faster than an earlier one of STEP_PATHS to be chosen over it (timing noise)
CHOICE_MARGIN = 0.03


def _spec(params: Params, num_landmarks: int, device: torch.device, warmup: int, repeats: int) -> dict:
    return {"device": str(device), "size_hw": tuple(params.input_hw), "num_landmarks": num_landmarks,
            "warmup": warmup, "repeats": repeats}


def _fresh_model(params: Params, num_landmarks: int, device: torch.device, fast: FastPath) -> torch.nn.Module:
    from farnet.models.factory import build_model  # timm: imported where a network is built

    torch.manual_seed(params.seed)
    return build_model(params.model, num_landmarks).to(device=device, memory_format=fast.memory_format)


def time_step_paths(params: Params, num_landmarks: int, device: torch.device, fast: FastPath,
                    paths: Sequence[str], steps: int, warmup: int = 5,
                    log: Callable[[str], None] = lambda m: None) -> dict:
    """The run's training step on each of ``paths`` at batch 1: ``step_s`` (mean of ``steps`` steps run back to
    back, the device synchronised only before and after, as the engine runs them) and ``build_s`` (the warm-up
    steps, with the capture or the compilation). A path that fails is recorded with its reason."""
    results = {}
    for path in paths:
        if path not in STEP_PATHS:
            results[path] = {"status": "failed", "reason": f"not one of {', '.join(STEP_PATHS)}"}
            continue
        try:
            model = _fresh_model(params, num_landmarks, device, fast)
            spec = _spec(params, num_landmarks, device, warmup, steps)
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
            results[path] = {"status": "ok", "step_s": step_s, "steps": steps, "build_s": round(t1 - t0, 2)}
            log(f"step path {path}: {1000 * step_s:.2f} ms per step (build and warm-up {t1 - t0:.1f} s)")
        except Exception as exc:  # noqa: BLE001 - one failing path (a capture, a compiler) must not lose the others
            results[path] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            log(f"step path {path}: failed: {results[path]['reason']}")
        finally:
            step = model = None
            release(device)
    return results


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
                path: str, batches: Sequence[int], repeats: int, log: Callable[[str], None] = lambda m: None) -> dict:
    """A training step on ``path`` and an inference (upload, forward, argmax, download) at each batch size, on
    ``model`` (the trained one: the steps change its weights in memory, so time them after it is saved)."""
    warmup = 5 if device.type == "cuda" else 1
    spec = _spec(params, num_landmarks, device, warmup, repeats)
    out: dict = {"path": path, "train_step": {}, "inference": {}}
    for batch in batches:
        for what, make in (("inference", lambda b: eager_inference(model, fast, spec, b)),
                           ("train_step", lambda b: path_train_step(model, fast, spec, b, path))):
            try:
                out[what][str(batch)] = timed(make(batch), spec, device, batch)
                log(f"{what} batch {batch}: {describe(out[what][str(batch)])}")
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a large batch: keep the smaller ones
                out[what][str(batch)] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
                log(f"{what} batch {batch}: failed: {out[what][str(batch)]['reason']}")
            release(device)
    for what in ("train_step", "inference"):
        ok = {b: m for b, m in out[what].items() if "images_per_s" in m}
        out[f"best_batch_{what}"] = int(max(ok, key=lambda b: ok[b]["images_per_s"])) if ok else None
    if device.type == "cuda":  # the inference's other path: normalisation, forward and argmax in a CUDA graph
        from farnet.commands.bench.compiled import graphed_inference

        out["inference_graph"] = {}
        for batch in sorted({1, out["best_batch_inference"] or 1}):
            try:
                out["inference_graph"][str(batch)] = timed(graphed_inference(model, fast, spec, batch), spec, device,
                                                           batch)
                log(f"inference (CUDA graph) batch {batch}: {describe(out['inference_graph'][str(batch)])}")
            except Exception as exc:  # noqa: BLE001 - a capture that fails is a result, not the end of the run
                out["inference_graph"][str(batch)] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            release(device)
    return out


def side_by_side(counts: Sequence[int], *, carry_hw: tuple[int, int], prepared_root: Path, work: Path,
                 params_path: str | Path, input_hw: tuple[int, int] | None, device: torch.device, path: str,
                 steps: int, warmup: int, timeout_s: float, log: Callable[[str], None] = lambda m: None) -> dict:
    """Step rates of ``n`` training processes sharing ``device``, for each ``n`` of ``counts`` (module text)."""
    results: dict = {"path": path, "steps_per_process": steps, "warmup_steps": warmup, "runs": {}}
    single = None
    for n in counts:
        folder = work / f"side-by-side-{n}"
        shutil.rmtree(folder, ignore_errors=True)  # an earlier command's ready and result files would count
        folder.mkdir(parents=True)
        runs = [SIDE_BY_SIDE_RUNS[i % len(SIDE_BY_SIDE_RUNS)] for i in range(n)]
        procs = []
        for i, run in enumerate(runs):
            job = {"index": i, "n": n, "run": run, "params": str(params_path), "carry_hw": list(carry_hw),
                   "input_hw": None if input_hw is None else list(input_hw), "prepared_root": str(prepared_root),
                   "device": str(device), "path": path, "steps": steps, "warmup": warmup, "folder": str(folder),
                   "barrier_timeout_s": timeout_s}
            procs.append(subprocess.Popen([sys.executable, "-m", "farnet.commands.bench.side_by_side", json.dumps(job)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        errors = []
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                if proc.returncode != 0:
                    errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                errors.append(f"no result within {timeout_s:.0f} s")
        done = [json.loads(p.read_text()) for p in sorted(folder.glob("result-*.json"))]
        entry: dict = {"processes": n, "runs": runs, "completed": len(done)}
        if errors:
            entry["errors"] = errors
        if done:
            span = max(d["t1"] for d in done) - min(d["t0"] for d in done)
            entry.update(per_process_steps_per_s=[round(d["steps"] / (d["t1"] - d["t0"]), 2) for d in done],
                         total_steps_per_s=round(sum(d["steps"] for d in done) / span, 2), span_s=round(span, 2))
            if n == 1 and len(done) == 1:
                single = entry["total_steps_per_s"]
            if single and len(done) == n:
                entry["speedup_vs_1"] = round(entry["total_steps_per_s"] / single, 2)
        results["runs"][str(n)] = entry
        log(f"side by side, {n} process(es): " + (f"{entry['total_steps_per_s']} steps/s in all" if done else
                                                    "no result") + (f"; errors: {errors}" if errors else ""))
    results["method"] = ("each process: the run's network, data and augmentation through the engine's loader "
                         f"and step path ({path}), batch 1; {warmup} warm-up steps, then a barrier (all processes "
                         f"ready), then {steps} steps timed (device synchronised at both ends). total_steps_per_s = "
                         "all timed steps / (last end - first start)")
    return results


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
