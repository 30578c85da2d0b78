"""``farnet replicate`` under its deadline: a clock that starts before the allocator's re-execution, every phase
after the training given the time left (and skipped, with the reason, when it does not fit), benchmark.json
written after each batch size and each side-by-side round, torch.compile timed last with a limit, one fallback
step path when the chosen one fails in training, the schedule's projection, and a clear line where the
environment cannot run the command. The expensive parts are faked; each test takes seconds."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from farnet.commands import replicate as rep
from farnet.commands.bench import side_by_side as sbs
from farnet.commands.bench.measure import describe
from farnet.commands.protocol import replication_params
from farnet.commands.run_record import Deadline, RunRecord
from farnet.core.allocator import OPT_OUT, STARTED_AT, command_started_at
from farnet.core.errors import ConfigError, DataError, TrainingDiverged
from farnet.core.fastpath import FastPath
from helpers import ROOT, write_committed_params

CPU = torch.device("cpu")


class FakeClock:
    """Seconds since the epoch that move only when a test says so."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the clock ---------------------------------------------------------------------------------------------------

@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the re-execution happens on glibc only")
def test_the_clock_starts_before_the_re_execution():
    code = ("import os, time; from farnet.core.allocator import tune_malloc; tune_malloc(); "
            "print(os.environ.get('FARNET_STARTED_AT'), time.time())")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT, STARTED_AT)}
    before = time.time()
    started, now = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                  check=True).stdout.split()
    assert before <= float(started) <= float(now)  # set by the first process, read by the re-executed one
    env[STARTED_AT] = "12345.5"  # already set (e.g. by a wrapper): kept
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()[0] == "12345.5"


def test_the_deadline_counts_from_the_recorded_start_and_the_variable_is_not_inherited():
    environ = {STARTED_AT: "1000.0"}
    assert command_started_at(environ, now=1030.0) == (1000.0, STARTED_AT)
    assert STARTED_AT not in environ  # side-by-side processes and later commands count from their own start
    for stale in ({STARTED_AT: "10.0"}, {STARTED_AT: "2000.0"}, {STARTED_AT: "soon"}, {}):
        started, source = command_started_at(stale, now=time.time())
        assert source != STARTED_AT and time.time() - 3600 <= started <= time.time()
    clock = FakeClock(1030.0)
    deadline = Deadline(1000.0, 600.0, margin_s=15.0, clock=clock)
    assert deadline.elapsed() == 30.0 and deadline.left() == 555.0
    clock.now = 1600.0
    assert deadline.left() == -15.0
    assert Deadline(1000.0, None, clock=clock).left() is None


# -- the environment ---------------------------------------------------------------------------------------------

def test_an_environment_that_cannot_run_the_command_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"Python >= 3\.11 is needed, this is 3\.10\.12"):
        rep.check_environment((3, 10, 12), find=lambda name: object())
    with pytest.raises(ConfigError, match=r"missing modules: pip install pillow tqdm$"):
        rep.check_environment((3, 11, 7), find=lambda name: None if name in ("PIL", "tqdm") else object())
    rep.check_environment((3, 12, 0), find=lambda name: object())

    code = ("import sys; sys.modules['tqdm'] = None; from farnet.cli import main; "
            "sys.exit(main(['replicate', '--carry', 'c.zip', '--out', 'out']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "farnet replicate: error: this environment cannot run farnet replicate: missing modules: pip install tqdm"]


# -- the step paths ----------------------------------------------------------------------------------------------

def _fake_paths(monkeypatch, compiled: dict | None = None) -> list:
    """Fake path timings: each path's step is its index in STEP_PATHS + 1 ms; the calls in order."""
    calls = []

    def measure(params, k, device, fast, path, steps, warmup):
        calls.append(path)
        return {"status": "ok", "step_s": (sbs.STEP_PATHS.index(path) + 1) / 1000, "steps": steps, "build_s": 0.1,
                "peak_memory_bytes": 1}

    def run_compiled(path, spec, timeout_s, log, *, worker):
        calls.append(("compile", round(timeout_s)))
        assert worker is sbs._compile_path_worker and spec["num_landmarks"] == 3
        return compiled

    monkeypatch.setattr(sbs, "_measure_path", measure)
    monkeypatch.setattr(sbs, "run_compiled", run_compiled)
    return calls


def test_torch_compile_is_timed_last_in_a_child_limited_to_what_the_others_left(monkeypatch):
    measured = {"status": "ok", "step_s": 0.0005, "steps": 2, "build_s": 40.0, "peak_memory_bytes": 1,
                "median_s": 0.0005, "images_per_s": 2000.0}
    calls = _fake_paths(monkeypatch, {"status": "ok", "train": {"1": measured}, "inference": {}, "compile_s": {}})
    asked = []
    limit = lambda: asked.append(list(calls)) or 120.0  # noqa: E731 - asked when compile's turn comes
    results = sbs.time_step_paths(None, 3, CPU, FastPath("fp32", False), ("compile", "deferred", "eager"), 2, 1,
                                  compile_limit_s=limit)
    assert calls == ["eager", "deferred", ("compile", 120)] and asked == [["eager", "deferred"]]
    assert results["compile"] == {"status": "ok", "step_s": 0.0005, "steps": 2, "build_s": 40.0,
                                  "peak_memory_bytes": 1, "limit_s": 120.0}
    assert sbs.fastest_path(results) == "compile"

    calls = _fake_paths(monkeypatch, {"status": "timeout", "reason": "…", "train": {}, "inference": {}})
    results = sbs.time_step_paths(None, 3, CPU, FastPath("fp32", False), ("eager", "compile"), 2, 1,
                                  compile_limit_s=lambda: 90.0)
    assert results["compile"]["status"] == "timeout" and "within the 90 s" in results["compile"]["reason"]
    assert sbs.fastest_path(results) == "eager"

    calls = _fake_paths(monkeypatch)  # too little time: the child is not even started
    results = sbs.time_step_paths(None, 3, CPU, FastPath("fp32", False), ("eager", "compile"), 2, 1,
                                  compile_limit_s=lambda: sbs.MIN_COMPILE_S - 1)
    assert calls == ["eager"] and results["compile"]["status"] == "skipped"


def test_the_compile_child_reports_as_run_compiled_reads_it(monkeypatch):
    monkeypatch.setattr(sbs, "_measure_path", lambda *a: {"status": "ok", "step_s": 0.004, "steps": 2,
                                                          "build_s": 30.0, "peak_memory_bytes": 5})
    messages = []
    path = sbs.BenchPath("compile", "fp32", False, compile=True)
    sbs._compile_path_worker(path, {"device": "cpu", "params": None, "num_landmarks": 3, "steps": 2, "warmup": 1},
                             SimpleNamespace(put=messages.append))
    assert messages[0] == ("compile_s", "train", 1, 30.0) and messages[-1] == ("done",)
    kind, batch, measured = messages[1]
    assert (kind, batch, measured["step_s"]) == ("train", 1, 0.004)
    assert describe(measured).startswith("0.004 s (250.00 img/s)")  # what run_compiled logs of it


def test_the_compile_limit_is_a_share_of_the_time_left_for_it_and_the_training(tmp_path):
    clock = FakeClock()
    plan = rep.MeasurePlan(deadline_s=600.0, reserve_s=180.0, compile_timeout_s=600.0)
    record = RunRecord(tmp_path, {}, Deadline(clock.now - 100, 600.0, margin_s=20.0, clock=clock))
    assert rep._compile_limit(record, plan) == pytest.approx(rep.COMPILE_SHARE * (600 - 100 - 20 - 180))
    record.deadline = Deadline(clock.now, None, clock=clock)
    assert rep._compile_limit(record, plan) == 600.0


# -- the batch sweep ---------------------------------------------------------------------------------------------

def test_the_batch_sweep_skips_what_the_time_left_cannot_hold_and_hands_over_each_batch(monkeypatch):
    monkeypatch.setattr(sbs, "eager_inference", lambda *a, **k: None)
    monkeypatch.setattr(sbs, "path_train_step", lambda *a, **k: None)
    monkeypatch.setattr(sbs, "timed", lambda fn, spec, device, batch: {
        "median_s": 1.0 * batch, "images_per_s": 1.0, "peak_memory_bytes": 0})
    snapshots = []
    out = sbs.batch_sweep(None, SimpleNamespace(input_hw=(32, 32)), 3, CPU, FastPath("fp32", False), "deferred",
                          (1, 2, 4, 8), 2, time_left=lambda: 20.0,
                          on_progress=lambda o: snapshots.append(json.loads(json.dumps(o))))
    # 1 warm-up + 2 repeats: batch 2 needs 1 s x 2 x 3 = 6 s, batch 4 12 s, batch 8 24 s > 20 s left
    for what in ("train_step", "inference"):
        assert [b for b, m in out[what].items() if "median_s" in m] == ["1", "2", "4"]
        assert out[what]["8"]["status"] == "skipped" and "20 s left" in out[what]["8"]["reason"]
        assert "24 s needed" in out[what]["8"]["reason"]
    assert [sorted(s["train_step"]) for s in snapshots] == [["1"], ["1", "2"], ["1", "2", "4"], ["1", "2", "4", "8"]]
    assert snapshots[0]["best_batch_train_step"] == 1

    out = sbs.batch_sweep(None, SimpleNamespace(input_hw=(32, 32)), 3, CPU, FastPath("fp32", False), "deferred",
                          (1, 2), 2, time_left=lambda: 0.0)
    assert all(m["status"] == "skipped" for what in ("train_step", "inference") for m in out[what].values())
    assert out["best_batch_train_step"] is None


# -- side by side ------------------------------------------------------------------------------------------------

# a side-by-side process as far as the parent sees it: 200 KB on stderr before the barrier (more than a pipe
# holds), the barrier, a result file; "fail" as its second argument: an error instead of the result
FAKE_WORKER = """
import json, pathlib, sys, time
job = json.loads(sys.argv[1])
sys.stderr.write("x" * 200_000 + "\\n")
sys.stderr.flush()
folder = pathlib.Path(job["folder"])
(folder / f"ready-{job['index']}").touch()
end = time.monotonic() + job["barrier_timeout_s"]
while len(list(folder.glob("ready-*"))) < job["n"]:
    if time.monotonic() > end:
        raise TimeoutError("barrier")
    time.sleep(0.01)
t0 = time.time(); time.sleep(0.05); t1 = time.time()
if sys.argv[2] == "fail" and job["index"] == 1:
    print("RuntimeError: CUDA out of memory (the worker's last line)", file=sys.stderr)
    sys.exit(3)
(folder / f"result-{job['index']}.json").write_text(json.dumps({"run": job["run"], "steps": job["steps"],
                                                                "t0": t0, "t1": t1}))
"""


def _fake_workers(monkeypatch, mode: str = "ok") -> None:
    real = subprocess.Popen

    def popen(argv, **kwargs):
        return real([sys.executable, "-c", FAKE_WORKER, argv[-1], mode], **kwargs)

    monkeypatch.setattr(sbs.subprocess, "Popen", popen)


def _side(tmp_path, **kwargs) -> dict:
    return sbs.side_by_side(kwargs.pop("counts", (2,)), carry_hw=(64, 64), prepared_root=tmp_path, work=tmp_path,
                            params_path="params.yaml", input_hw=None, device=CPU, path="deferred", steps=3, warmup=1,
                            **{"timeout_s": 20.0, **kwargs})


def test_a_side_by_side_process_writing_much_before_the_barrier_does_not_stall_the_round(tmp_path, monkeypatch):
    _fake_workers(monkeypatch)
    t0 = time.monotonic()
    rounds = []
    results = _side(tmp_path, counts=(1, 2), on_round=lambda r: rounds.append(json.loads(json.dumps(r))))
    assert time.monotonic() - t0 < 15  # a pipe read after another process's stalled this to the 20 s limit
    assert [sorted(r["runs"]) for r in rounds] == [["1"], ["1", "2"]]  # written after each round
    two = results["runs"]["2"]
    assert two["completed"] == 2 and "errors" not in two and two["speedup_vs_1"] > 0
    assert two["limit_s"] == 20.0


def test_a_failed_side_by_side_process_leaves_the_end_of_its_stderr(tmp_path, monkeypatch):
    _fake_workers(monkeypatch, "fail")
    two = _side(tmp_path)["runs"]["2"]
    assert two["completed"] == 1
    assert two["errors"] == ["process 1 (msfa_fr): RuntimeError: CUDA out of memory (the worker's last line)"]
    assert two["stderr_tail"]["1"][-1].endswith("(the worker's last line)") and len(two["stderr_tail"]["1"]) == 2


def test_side_by_side_rounds_get_the_time_left_and_are_skipped_without_it(tmp_path, monkeypatch):
    _fake_workers(monkeypatch)
    left = iter([45.0, 10.0])
    rounds = []
    results = _side(tmp_path, counts=(1, 2), time_left=lambda: next(left), on_round=lambda r: rounds.append(1))
    assert results["runs"]["1"]["completed"] == 1 and results["runs"]["1"]["limit_s"] == 45.0
    assert results["runs"]["2"]["status"] == "skipped" and "10 s left" in results["runs"]["2"]["reason"]
    assert len(rounds) == 2


# -- the training's fallback -------------------------------------------------------------------------------------

def _job(tmp_path, plan=rep.MeasurePlan()) -> rep._Job:
    params, _ = replication_params(write_committed_params(tmp_path), "farnet", (64, 64))
    return rep._Job(params, CPU, FastPath("fp32", False), 3, tmp_path / "work", plan, False)


def _fake_training(monkeypatch, failures: dict) -> list:
    """train_run that raises ``failures[path]`` on that path and otherwise writes a train info."""
    calls = []

    def train_run(params, prepared_root, model_dir, log_dir, *, progress, budget, log, step_path):
        calls.append((step_path, sorted(p.name for p in model_dir.glob("*")) if model_dir.exists() else None))
        if step_path in failures:
            model_dir.mkdir(parents=True, exist_ok=True)
            (model_dir / "state").mkdir(exist_ok=True)  # what the failed path left
            raise failures[step_path]
        return {"steps": 7, "step_path": step_path}

    monkeypatch.setattr(rep, "train_run", train_run)
    return calls


@pytest.mark.parametrize("failed, error, ran", [
    ("graph", RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore"), "deferred"),
    ("compile", TrainingDiverged("loss became nan at epoch 3"), "deferred"),
    ("deferred", TrainingDiverged("loss became inf at epoch 1"), "eager"),
])
def test_a_failed_step_path_falls_back_once_and_says_so(tmp_path, monkeypatch, failed, error, ran):
    calls = _fake_training(monkeypatch, {failed: error})
    record = RunRecord(tmp_path, {}, Deadline(time.time(), None))
    model, info, exit_code, path = rep._train(record, _job(tmp_path), failed, None)
    assert (path, info, exit_code) == (ran, {"steps": 7, "step_path": ran}, 0)
    assert calls == [(failed, None), (ran, None)]  # the failed path's state was removed: a fresh start
    reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    expected = {"failed_path": failed, "reason": reason, "ran_path": ran}
    assert record.fields["fallback"] == expected and record.fields["step_path"] == ran
    assert json.loads((tmp_path / "benchmark.json").read_text())["fallback"] == expected


def test_no_fallback_for_the_input_s_fault_and_only_one_fallback(tmp_path, monkeypatch):
    calls = _fake_training(monkeypatch, {"graph": DataError(tmp_path / "x.csv", "bad row")})
    record = RunRecord(tmp_path, {}, Deadline(time.time(), None))
    with pytest.raises(DataError, match="bad row"):
        rep._train(record, _job(tmp_path), "graph", None)
    assert [c[0] for c in calls] == ["graph"] and "fallback" not in record.fields

    calls = _fake_training(monkeypatch, {"graph": RuntimeError("capture"), "deferred": RuntimeError("again")})
    with pytest.raises(RuntimeError, match="again"):
        rep._train(record, _job(tmp_path), "graph", None)
    assert [c[0] for c in calls] == ["graph", "deferred"]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "failed" and run["fallback"]["fallback_failed"] == "RuntimeError: again"


def test_the_fallback_trains_in_the_time_left(tmp_path, monkeypatch):
    budgets = []
    clock = FakeClock()

    def train_run(params, prepared_root, model_dir, log_dir, *, progress, budget, log, step_path):
        budgets.append(budget.seconds)
        clock.now += 200  # each attempt takes 200 s
        if step_path == "graph":
            raise RuntimeError("capture")
        return {"steps": 1, "step_path": step_path}

    monkeypatch.setattr(rep, "train_run", train_run)
    plan = rep.MeasurePlan(deadline_s=900.0, reserve_s=180.0)
    record = RunRecord(tmp_path, {}, Deadline(clock.now, 900.0, margin_s=20.0, clock=clock))
    rep._train(record, _job(tmp_path, plan), "graph", None)
    assert budgets == [900 - 20 - 180, 900 - 200 - 20 - 180]


# -- the evaluation ----------------------------------------------------------------------------------------------

def test_a_later_split_is_skipped_when_the_time_left_is_less_than_the_split_before_took(tmp_path, monkeypatch):
    import pandas as pd

    from farnet.stages.evaluate import SplitResult

    clock = FakeClock()

    def evaluate_splits(params, prepared, trained, device, progress):
        for split in ("test1", "test2"):
            clock.now += 50  # each split takes 50 s
            yield SplitResult(split, {split: {"mre_mm": 1.0}}, pd.DataFrame({"a": [1]}), pd.DataFrame({"b": [2]}))

    monkeypatch.setattr(rep, "evaluate_splits", evaluate_splits)
    record = RunRecord(tmp_path, {"protocol": "REDUCED: test"}, Deadline(clock.now, 100.0, margin_s=10.0,
                                                                          clock=clock))
    metrics = rep._evaluate(record, _job(tmp_path), None, {"schedule": {}})
    assert set(metrics) == {"protocol", "schedule", "test1"}  # 40 s left after Test1's 50 s: Test2 skipped
    assert json.loads((tmp_path / "metrics.json").read_text())["test1"] == {"mre_mm": 1.0}
    reason = "40 s left of the deadline, test1 took 50 s"
    assert record.fields["skipped"] == {"evaluation test2": reason}
    assert json.loads((tmp_path / "benchmark.json").read_text())["skipped"] == {"evaluation test2": reason}

    record.deadline = Deadline(clock.now, None, clock=clock)  # no deadline: both splits
    assert {"test1", "test2"} <= set(rep._evaluate(record, _job(tmp_path), None, {"schedule": {}}))


# -- the schedule's projection -----------------------------------------------------------------------------------

def test_the_projection_says_how_much_ran_and_what_the_full_schedule_takes(tmp_path):
    params, _ = replication_params(write_committed_params(tmp_path), "farnet", (64, 64))
    info = {"n_train_images": 150, "steps": 1500, "train_wall_s": 75.0, "step_path": "deferred",
            "schedule": {"planned_epochs": 300}}
    step_paths = {"eager": {"status": "ok", "step_s": 0.05}, "deferred": {"status": "ok", "step_s": 0.04},
                  "graph": {"status": "failed", "reason": "capture"}}
    projection = rep.schedule_projection(info, params, step_paths)
    assert projection["planned_steps"] == 45_000 and projection["steps_done"] == 1500  # 300 epochs x 150 images
    assert projection["done_fraction"] == pytest.approx(1 / 30, abs=1e-4)
    assert projection["step_s_by_path"] == {"eager": 0.05, "deferred": 0.04}
    assert projection["projected_full_s"] == 1800.0  # 45,000 x 40 ms
    assert projection["projected_full_s_in_run"] == 2250.0  # 45,000 x 75 s / 1,500
    line = rep.describe_projection(projection)
    assert line == ("trained on deferred: 1,500 of 45,000 planned steps (3.3 %); step times: eager 50.0 ms, "
                    "deferred 40.0 ms; the full schedule: 30.0 min at 40.0 ms per step, 37.5 min at the "
                    "training's own 50.0 ms per step")
    one_path = rep.schedule_projection(info, params, {})  # one path asked for: not timed before the run
    assert one_path["projected_full_s"] is None and one_path["projected_full_s_in_run"] == 2250.0


# -- the whole command, its expensive parts faked ------------------------------------------------------------------

def test_what_the_deadline_leaves_no_time_for_is_recorded_as_skipped_and_the_run_still_finishes(tmp_path,
                                                                                                monkeypatch):
    """The training (faked: it takes 590 s of a fake clock) uses the 10-minute deadline past its margin; Test1
    is still evaluated, Test2, the batch sweep and the side-by-side round are skipped and say why."""
    from helpers import write_prepared
    from model_files import TinyNet, write_model

    from farnet.data.carry import pack_carry
    from farnet.models import trained as trained_module

    k = 3
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))  # the files hold TinyNets
    carry = tmp_path / "carry.zip"
    pack_carry(write_prepared(tmp_path, input_hw=(64, 64), k=k), carry, codec="png", progress=False)
    clock = FakeClock()

    def train_run(params, prepared_root, model_dir, log_dir, *, progress, budget, log, step_path):
        assert budget.seconds == 600 - 15 - 180  # the deadline less its margin and the reserve
        clock.now += 590
        write_model(model_dir / "model.pt", k=k, input_hw=(64, 64), dataset="isbi2015", net=TinyNet(k))
        info = {"run": "farnet", "epochs": 0.667, "steps": 100, "train_wall_s": 500.0, "select": "last",
                "selected_epoch": 1, "n_train_images": 4, "device": "cpu", "hardware": "test", "fast_path": "fp32",
                "step_path": step_path, "schedule": {"full": False, "planned_epochs": 300, "epochs": 1, "steps": 100,
                                                     "lr_milestones": [], "reduced_by": "time budget",
                                                     "stopped": "time", "probe_step_s": 4.0}}
        (model_dir / "train_info.json").write_text(json.dumps(info))
        return info

    monkeypatch.setattr(rep, "train_run", train_run)
    monkeypatch.setattr(rep, "time_step_paths", lambda *a, **kw: {"eager": {"status": "ok", "step_s": 5.0},
                                                                 "deferred": {"status": "ok", "step_s": 4.0}})
    plan = rep.MeasurePlan(paths=("eager", "deferred"), bench_repeats=1, bench_batches=(1, 2), side_by_side=(1,),
                           deadline_s=600.0, reserve_s=180.0)
    out = tmp_path / "out"
    summary = rep.replicate(carry, out, device=CPU, budget=None, params_path=write_committed_params(tmp_path),
                            work=tmp_path / "work", plan=plan, progress=False,
                            deadline=Deadline(clock.now, 600.0, margin_s=15.0, clock=clock))
    assert summary["exit_code"] == 0 and set(summary["metrics"]) >= {"test1"} and "test2" not in summary["metrics"]
    bench = json.loads((out / "benchmark.json").read_text())
    assert bench["skipped"] == {"evaluation test2": "0 s left of the deadline, test1 took 0 s"}
    assert all(m["status"] == "skipped" for what in ("train_step", "inference")
               for m in bench["batches"][what].values())
    assert bench["side_by_side"]["runs"]["1"]["status"] == "skipped"
    assert bench["schedule"]["planned_steps"] == 300 * 4 and bench["schedule"]["steps_done"] == 100
    assert bench["schedule"]["projected_full_s"] == 300 * 4 * 4.0  # the deferred path's 4 s step
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["step_path"] == "deferred" and run["skipped"] == bench["skipped"]
    assert run["schedule_projection"] == bench["schedule"] and run["wall_s"] == 590.0
