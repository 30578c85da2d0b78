"""Smoke tests of ``farnet bench``: the report's schema and that its numbers are positive. No timing is asserted
(performance is measured by the command on a quiet machine, never by tests)."""

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from farnet.core import fastpath
from farnet.commands.bench import command, compiled, measure, roofline, summary
from farnet.cli import main
from farnet.data.cache import build_cache
from farnet.data.sample import Sample
from farnet.core.errors import ConfigError

EAGER = ["fp32", "bf16", "channels_last", "bf16+channels_last"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    assert main(["bench", "--quick", "--size", "64", "64", "--repeats", "1", "--warmup", "0", "--device", "cpu",
                 "--out", str(out)]) == 0
    return json.loads(out.read_text()), out


def test_quick_report_schema(quick_report):
    doc, out = quick_report
    assert doc["schema"] == summary.SCHEMA_VERSION and doc["quick"] is True
    assert doc["device"].startswith("cpu-") and doc["device"] == summary.device_slug(torch.device("cpu"))
    for key in ("hardware", "torch", "date", "git_commit", "device_name"):
        assert isinstance(doc[key], str) and doc[key]
    assert doc["settings"]["size_hw"] == [64, 64] and doc["settings"]["batches"] == [1, 2]
    assert doc["auto"]["precision"] in ("fp32", "bf16")
    assert doc["flops"]["train_step_per_image"] > doc["flops"]["forward_per_image"] > 0
    assert doc["reference"]["authors_cpu_train_step_s"] == summary.AUTHORS_CPU_TRAIN_STEP_S == 7.0
    assert doc["reference"]["authors_cpu_inference_s"] == 2.2
    peak = doc["peak"]  # measured in the same run, fp32 and bf16, on the same cores
    assert peak["measured"] is True and "MEASURED" in peak["source"]
    assert peak["bf16_flops_per_s"] > 0 and peak["fp32_flops_per_s"] > 0
    assert len(peak["conv"]["bf16_times_s"]) == 2 and peak["reference"]["estimate"] is True
    assert doc["data"] is None and doc["complete"] is True
    floor = doc["roofline"]  # the limit, measured in the same run
    assert floor["bandwidth"]["bytes_per_s"] > 0 and floor["path"] == fastpath.resolve("auto", "auto", "cpu").describe()
    for what in ("train", "inference"):
        f = floor[what]
        assert f["floor_s"] == pytest.approx(f["compute_bound_s"] + f["memory_bound_s"]) and f["floor_s"] > 0
        assert f["flops"] == doc["flops"]["train_step_per_image" if what == "train" else "forward_per_image"]
    assert floor["train"]["floor_s"] > floor["inference"]["floor_s"]
    table = out.with_suffix(".md").read_text()
    assert "Roofline floor" in table and "GB/s" in table
    for name in EAGER:
        assert f"| {name} " in table


def test_quick_report_numbers_are_positive(quick_report):
    doc, _ = quick_report
    assert list(doc["paths"])[:4] == EAGER
    native = fastpath.bf16_native("cpu")
    for name in EAGER:
        path = doc["paths"][name]
        if name.startswith("bf16") and not native:  # emulated bf16 is not timed unless asked for
            assert path["status"] == "skipped" and "no native bf16" in path["reason"]
            continue
        assert path["status"] == "ok", path.get("reason")
        for what in ("train", "inference"):
            assert sorted(path[what]) == ["1", "2"]
            for batch, m in path[what].items():
                assert m["median_s"] > 0 and len(m["times_s"]) == 1
                assert m["images_per_s"] == pytest.approx(int(batch) / m["median_s"])
                assert m["peak_memory_bytes"] > 0 and m["flops_per_s"] > 0
                assert m["fraction_of_peak"] is None or m["fraction_of_peak"] > 0  # None: no clock known
        r = path["ratios"]
        assert r["train_speedup_vs_fp32"] > 0 and r["inference_speedup_vs_fp32"] > 0
        assert r["train_speedup_vs_authors"] is None  # the authors' figures are for 800x640 only
        assert r["train_floor_s"] == doc["roofline"]["train"]["floor_s"] and r["train_time_over_floor"] > 0
        assert r["inference_time_over_floor"] > 0
        assert r["train_best_batch"] in (1, 2) and r["paper_schedule_train_s"] > 0
    assert doc["paths"]["fp32"]["ratios"]["train_speedup_vs_fp32"] == 1.0
    compiled = [p for name, p in doc["paths"].items() if name.startswith("compile")]
    assert len(compiled) == 1 and compiled[0]["status"] == "skipped" and "--quick" in compiled[0]["reason"]


def test_ratios_to_the_authors_at_800x640_on_their_kind_of_cpu(monkeypatch):
    monkeypatch.setattr(summary, "cpu_isa", lambda: summary.AUTHORS_CPU_ISA)
    results = {"fp32": {"status": "ok", "precision": "fp32",
                        "train": {"1": {"median_s": 16.0, "images_per_s": 1 / 16}},
                        "inference": {"1": {"median_s": 4.4, "images_per_s": 1 / 4.4}}},
               "bf16": {"status": "ok", "precision": "bf16",
                        "train": {"1": {"median_s": 1.75, "images_per_s": 1 / 1.75}},
                        "inference": {"1": {"median_s": 1.1, "images_per_s": 1 / 1.1}}}}
    flops = {"train_step_per_image": 930e9, "forward_per_image": 311e9}
    peak = {"bf16_flops_per_s": 930e9, "fp32_flops_per_s": 465e9}
    summary.add_ratios(results, flops, peak, torch.device("cpu"), (800, 640))
    r = results["bf16"]["ratios"]
    assert r["train_speedup_vs_fp32"] == pytest.approx(16 / 1.75) and r["train_speedup_vs_authors"] == pytest.approx(4.0)
    assert r["inference_speedup_vs_authors"] == pytest.approx(2.0) and r["inference_speedup_vs_fp32"] == pytest.approx(4.0)
    assert r["train_floor_s"] == pytest.approx(1.0) and r["train_time_over_floor"] == pytest.approx(1.75)
    assert results["bf16"]["train"]["1"]["fraction_of_peak"] == pytest.approx(1 / 1.75)
    assert results["fp32"]["train"]["1"]["fraction_of_peak"] == pytest.approx(930e9 / 16 / 465e9)
    assert r["paper_schedule_train_s"] == pytest.approx(45000 * 1.75)
    summary.add_ratios(results, flops, peak, torch.device("cuda"), (800, 640))
    assert results["bf16"]["ratios"]["train_speedup_vs_authors"] is None  # CPU figures: not for a GPU
    monkeypatch.setattr(summary, "cpu_isa", lambda: "avx2")
    summary.add_ratios(results, flops, peak, torch.device("cpu"), (800, 640))
    assert results["bf16"]["ratios"]["train_speedup_vs_authors"] is None  # nor for another CPU


def test_data_path_from_a_prepared_cache(tmp_path):
    samples = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 30), 50 * i, np.uint8)).save(path)
        samples.append(Sample(image_id=str(i), image_path=path, landmarks_px=np.array([[5.0, 6.0], [20.0, 30.0]]),
                              original_wh=(30, 40), stored_wh=(30, 40), spacing_mm=0.1))
    cache = build_cache(samples, tmp_path / "cache", (64, 32), progress=False)
    data = measure.measure_data(cache, torch.device("cpu"), num_workers=0, steps=5)
    assert data["input_hw"] == [64, 32] and data["batches_timed"] == 3 and data["pin_memory"] is False
    assert data["median_batch_s"] > 0 and data["first_batch_s"] > 0


def test_paths_per_device_and_bad_options():
    names = [p.name for p in measure.bench_paths(torch.device("cpu"))]
    assert names[:4] == EAGER and names[4].startswith("compile(") and not any("cuda_graphs" in n for n in names)
    selected = command.select_paths(measure.bench_paths(torch.device("cpu")), ["fp32", "compile"], quick=True)
    assert [p.name for p in selected] == ["fp32", names[4]]
    emulated = command.select_paths(measure.bench_paths(torch.device("cpu")), None, quick=False, bf16_native=False)
    assert [p if isinstance(p, tuple) else p.name for p in emulated][:4] == [
        "fp32", ("bf16", emulated[1][1]), "channels_last", ("bf16+channels_last", emulated[3][1])]
    assert "no native bf16" in emulated[1][1]
    asked = command.select_paths(measure.bench_paths(torch.device("cpu")), ["bf16"], quick=False, bf16_native=False)
    assert [p.name for p in asked] == ["bf16"]  # named paths always run
    with pytest.raises(ConfigError, match="--paths 'tf32' is not one of"):
        command.select_paths(measure.bench_paths(torch.device("cpu")), ["tf32"], quick=False)
    assert main(["bench", "--size", "100", "64", "--quick"]) == 2  # reported as an error, not a traceback


def test_cpu_peak_is_labelled_an_estimate():
    peak = summary.cpu_peak_estimate()
    assert peak["estimate"] is True
    if peak["bf16_flops_per_s"] is not None:
        assert peak["bf16_flops_per_s"] >= peak["fp32_flops_per_s"] > 0


def test_measured_peak_times_the_conv_in_both_precisions():
    measured = measure.measure_conv_peak(torch.device("cpu"), repeats=1, warmup=0)
    assert len(measured["fp32_times_s"]) == len(measured["bf16_times_s"]) == 1
    flops = 2 * 256 * 256 * 9 * 200 * 160
    assert measured["fp32_flops_per_s"] == pytest.approx(flops / measured["fp32_times_s"][0])
    assert "3x3 convolution 256 -> 256 channels at 200x160" in measured["method"]
    peak = summary.device_peak(torch.device("cpu"), measured)
    assert peak["measured"] is True and peak["bf16_flops_per_s"] == measured["bf16_flops_per_s"]
    forced = summary.device_peak(torch.device("cpu"), measured, peak_tflops=1.0)
    assert forced["measured"] is False and forced["bf16_flops_per_s"] == 1e12


def _partial_then_error(path, spec, messages):  # a compile child that measured batch 1, then failed
    messages.put(("compile_s", "train", 1, 12.5))
    messages.put(("train", 1, {"median_s": 0.5, "images_per_s": 2.0, "peak_memory_bytes": 2**30}))
    messages.put(("error", "RuntimeError: out of memory"))


def _hangs(path, spec, messages):
    time.sleep(60)


def test_compile_child_results_are_kept_on_error_and_timeout():
    path = measure.BenchPath("compile(fp32)", "fp32", False, compile=True)
    entry = compiled.run_compiled(path, {}, timeout_s=60, worker=_partial_then_error)
    assert entry["status"] == "partial" and "out of memory" in entry["reason"]
    assert entry["train"]["1"]["median_s"] == 0.5 and entry["compile_s"] == {"train_1": 12.5}
    entry = compiled.run_compiled(path, {}, timeout_s=2, worker=_hangs)
    assert entry["status"] == "timeout" and "did not finish within 2 s" in entry["reason"]


def test_profile_groups_a_steps_time_by_what_the_ops_do():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(1, 3, 32, 32)

    def step():
        y = torch.cat([conv(x), conv(x)], dim=1)
        torch.nn.functional.interpolate(y, scale_factor=2.0, mode="bilinear").relu().sum().backward()

    step()
    prof = measure.profile_step(step, torch.device("cpu"), top=5)
    assert {"convolution", "concatenation", "up-sampling"} <= set(prof["groups"])
    assert sum(g["share"] for g in prof["groups"].values()) == pytest.approx(1.0)
    assert prof["self_time_s"] == pytest.approx(sum(g["s"] for g in prof["groups"].values()))
    assert len(prof["top_ops"]) == 5 and prof["top_ops"][0]["s"] >= prof["top_ops"][-1]["s"]


def test_roofline_floor_of_known_operations():
    """Per operation the larger of FLOPs ÷ rate (of its dtype) and bytes ÷ bandwidth, summed; copies left out."""
    ops = [{"op": "aten.convolution", "flops": 8e9, "bytes": 1e6, "dtype": "bf16"},  # 2 s of compute
           {"op": "aten.convolution", "flops": 2e9, "bytes": 1e6, "dtype": "fp32"},  # 1 s at the fp32 rate
           {"op": "aten.relu", "flops": 0, "bytes": 5e9, "dtype": "bf16"},  # 0.5 s of memory
           {"op": "aten.copy_", "flops": 0, "bytes": 3e9, "dtype": "bf16"}]  # overhead: left out
    floor = roofline.roofline_floor(ops, {"bf16": 4e9, "fp32": 2e9}, 1e10)
    assert floor["floor_s"] == pytest.approx(3.5)
    assert floor["compute_bound_s"] == pytest.approx(3.0) and floor["memory_bound_s"] == pytest.approx(0.5)
    assert floor["overhead_left_out"] == {"bytes": 3e9, "s_at_bandwidth": pytest.approx(0.3)}
    assert [o["op"] for o in floor["top_ops"]] == ["aten.convolution", "aten.relu"]


def test_the_op_log_counts_flops_and_bytes_of_each_operation():
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 16, 16)
    with roofline.OpLog() as log:
        y = conv(x).relu()
        y.view(-1)
    by_name = {op["op"]: op for op in log.ops}
    assert by_name["aten.convolution"]["flops"] == 2 * 2 * 8 * 4 * 9 * 16 * 16  # multiply-adds x 2
    assert by_name["aten.convolution"]["bytes"] == 4 * (x.numel() + conv.weight.numel() + y.numel())
    assert by_name["aten.relu"]["bytes"] == 4 * 2 * y.numel() and by_name["aten.relu"]["flops"] == 0
    assert by_name["aten.view"]["bytes"] == 0  # a view moves nothing
    assert by_name["aten.convolution"]["dtype"] == "fp32"


def test_bandwidth_is_bytes_read_and_written_per_second():
    measured = roofline.measure_bandwidth(torch.device("cpu"), repeats=1, warmup=0)
    assert measured["bytes_per_s"] == pytest.approx(2 * roofline.BANDWIDTH_BYTES / measured["times_s"][0])


def test_release_collects_the_steppers_cycles_before_emptying_the_cuda_cache(monkeypatch):
    import gc
    import weakref

    from farnet.training.losses import ExponentialWeightedCenterLoss
    from farnet.training.steps import make_stepper
    from helpers import TinyNet

    stepper = make_stepper(TinyNet(), ExponentialWeightedCenterLoss(40), fastpath.FastPath("fp32", False),
                           torch.device("cpu"), "deferred", optimizer="adam", lr=1e-3, sigma_px=2.0)
    alive = weakref.ref(stepper)
    gc.disable()  # only release() may collect here
    try:
        del stepper
        assert alive() is not None  # a reference cycle: dropping the last name does not free it
        measure.release(torch.device("cpu"))
        assert alive() is None
    finally:
        gc.enable()
    calls = []
    monkeypatch.setattr(measure.gc, "collect", lambda: calls.append("collect"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    measure.release(torch.device("cuda"))
    assert calls == ["collect", "empty_cache"]


def test_bench_imports_run_on_python_3_10():
    """No ``datetime.UTC`` nor ``typing.Self`` (both new in Python 3.11) in the bench package or the carry writer."""
    import ast
    from pathlib import Path

    import farnet

    package = Path(farnet.__file__).parent
    newer = {("datetime", "UTC"), ("typing", "Self")}
    for path in [*sorted((package / "commands" / "bench").glob("*.py")), package / "data" / "carry.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found = {(node.module, alias.name) for alias in node.names} & newer
                assert not found, f"{path}: imports {found}, new in Python 3.11"
