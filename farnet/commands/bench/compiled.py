"""The paths that build something before they run: CUDA graphs (captured in this process) and torch.compile (in a
child process with a time limit, since compiling FARNet on a small CPU takes many minutes; what it measured
before a failure or the limit is kept, and the reason recorded)."""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable

import torch

from farnet.commands.bench.measure import (BenchPath, describe, eager_inference, eager_train_step, make_inputs, make_model,
                                  path_settings, path_train_step, sync, timed)
from farnet.core.fastpath import FastPath, tune_backends


def graphed_train_step(model, fast: FastPath, spec: dict, batch: int) -> Callable[[], None]:
    """The whole training step (forward, loss, backward, Adam) captured once in a CUDA graph and replayed: the
    engine's graph path (:class:`farnet.training.steps.Stepper`), on inputs already on the device."""
    return path_train_step(model, fast, spec, batch, "graph")


def graphed_inference(model, fast: FastPath, spec: dict, batch: int,
                      images: torch.Tensor | None = None) -> Callable[[], torch.Tensor]:
    """Normalisation, forward and argmax decoding captured in a CUDA graph; upload and download around it.

    Args:
        images: (B, 1, H, W) uint8 to predict (default: random ones of ``spec``'s size).

    Returns:
        A function that predicts the landmarks (B, K, 2) of ``images`` in input pixels, on the host.
    """
    from farnet.evaluation.heatmaps import decode_argmax
    from farnet.models.interface import HeatmapNetwork

    device = torch.device(spec["device"])
    host_images = (make_inputs(spec, batch, torch.device("cpu"))[0] if images is None else images).pin_memory()
    static_images = host_images.to(device)
    network = HeatmapNetwork(model.eval(), fast.precision, fast.channels_last, cache_enabled=False)

    @torch.no_grad()
    def body() -> torch.Tensor:
        return decode_argmax(network(static_images))

    side = torch.cuda.Stream(device)  # one stream for all warm-up runs: its cached memory serves each of them
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads' CUDA calls do not break it
        static_out = body()

    def infer() -> torch.Tensor:
        static_images.copy_(host_images, non_blocking=True)
        graph.replay()
        return static_out.cpu()

    return infer


def run_compiled(path: BenchPath, spec: dict, timeout_s: float, log: Callable[[str], None] = lambda m: None, *,
                 worker: Callable | None = None) -> dict:
    """Run ``worker`` (default :func:`_compile_worker`) in a child process; keep what it measured before a failure
    or the time limit.

    The child reports through a queue: ``("compile_s", what, batch, seconds)``, ``(what, batch, measurement)``
    with ``what`` "train" or "inference", then ``("done",)`` or ``("error", message)``.
    """
    entry = {"status": "ok", **path_settings(path), "train": {}, "inference": {}, "compile_s": {}}
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    # not a daemon: inductor compiles in worker processes of its own, which a daemon may not start
    child = context.Process(target=worker or _compile_worker, args=(path, spec, messages), daemon=False)
    started = time.monotonic()
    child.start()
    try:
        while True:
            left = timeout_s - (time.monotonic() - started)
            if left <= 0:
                raise TimeoutError
            try:
                kind, *payload = messages.get(timeout=min(left, 5.0))
            except queue.Empty:
                if not child.is_alive() and messages.empty():
                    raise ChildProcessError(f"the compile process ended (exit code {child.exitcode})") from None
                continue
            if kind == "done":
                break
            if kind == "error":
                raise RuntimeError(payload[0])
            if kind == "compile_s":
                what, batch, seconds = payload
                entry["compile_s"][f"{what}_{batch}"] = seconds
                log(f"   compiled {what} batch {batch} in {seconds:.0f} s")
            else:  # "train" or "inference"
                batch, measured = payload
                entry[kind][str(batch)] = measured
                log(f"   {kind:<9} batch {batch}: {describe(measured)}")
    except TimeoutError:
        entry.update(status="partial" if entry["train"] else "timeout",
                     reason=f"torch.compile: compilation and timing did not finish within {timeout_s:.0f} s on "
                            f"this machine (--compile-timeout); kept what was measured before")
    # the child's error, or ours: recorded, so the other paths' results are kept
    except Exception as exc:  # noqa: BLE001
        entry.update(status="partial" if entry["train"] else "failed",
                     reason=f"torch.compile failed: {type(exc).__name__}: {exc}")
    finally:
        if child.is_alive():
            child.terminate()
            child.join(10)
            if child.is_alive():
                child.kill()
        child.join(10)
        messages.close()
        messages.cancel_join_thread()
    if entry["status"] != "ok":
        log(f"   {entry['status']}: {entry['reason']}")
    return entry


def _compile_worker(path: BenchPath, spec: dict, messages) -> None:
    """Child process: compile, then time training (the whole model under torch.compile) and inference (compiled
    with freezing, :meth:`farnet.models.interface.HeatmapNetwork.compile_frozen`), batch 1 first."""
    try:
        device = torch.device(spec["device"])
        torch.set_num_threads(spec["threads"])
        tune_backends(device)
        order = [("train", spec["batches"][0]), ("inference", spec["batches"][0])]
        order += [(what, b) for what in ("train", "inference") for b in spec["batches"][1:]]
        for what, batch in order:
            if what == "train":  # the whole model compiled, as the compile step path trains it
                fn = eager_train_step(torch.compile(make_model(spec, device, path)), path.fast, spec, batch)
            else:  # compiled with freezing, as the evaluation and `farnet predict --compile` predict
                fn = eager_inference(make_model(spec, device, path), path.fast, spec, batch, path="compile")
            t0 = time.perf_counter()
            fn()  # compiles
            sync(device)
            messages.put(("compile_s", what, batch, time.perf_counter() - t0))
            messages.put((what, batch, timed(fn, spec, device, batch)))
            del fn
            torch._dynamo.reset()
        messages.put(("done",))
    # reported to the parent, which records it in the JSON
    except Exception as exc:  # noqa: BLE001
        messages.put(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
