"""The step paths (farnet.training.steps): the deferred path trains exactly as the eager one, reading its losses
later; make_stepper is the one set-up of a stepper and its optimiser."""

import math

import pytest
import torch

from farnet.core.errors import TrainingDiverged
from farnet.core.fastpath import FastPath, device_constant
from farnet.training.engine import RunSettings, train
from farnet.training.losses import ExponentialWeightedCenterLoss
from farnet.training.options import TrainOptions
from farnet.training.steps import (STEP_PATHS, Stepper, build_optimizer, make_stepper,
                                   optimizer_settings)
from helpers import RandomLandmarks, TinyNet

FP32 = FastPath("fp32", False)
CPU = torch.device("cpu")


def batches(n, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8, generator=g),
             torch.rand(2, 2, 2, generator=g) * 15) for _ in range(n)]


def stepped(path, data, read_every=1):
    torch.manual_seed(0)
    model = TinyNet(batch_norm=True).train()
    optimizer = build_optimizer("adam", model.parameters(), 1e-2)
    stepper = Stepper(model, optimizer, ExponentialWeightedCenterLoss(40), 2.0, FP32, CPU, path)
    reads = []
    for i, (images, points) in enumerate(data):
        stepper.set_lr(1e-2 / (i + 1))
        stepper.step(images, points)
        if (i + 1) % read_every == 0:
            reads.append(stepper.read())
    return model, reads


def test_the_deferred_path_trains_as_the_eager_one_and_sums_its_losses_until_read():
    data = batches(6)
    eager, eager_reads = stepped("eager", data)
    deferred, deferred_reads = stepped("deferred", data, read_every=3)
    for (name, a), b in zip(eager.state_dict().items(), deferred.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert [n for n, _ in eager_reads] == [1] * 6 and [n for n, _ in deferred_reads] == [3, 3]
    assert set(deferred_reads[0][1]) == {"loss", "loss_fine", "loss_coarse"}
    for k, (n, sums) in enumerate(deferred_reads):
        expected = sum(eager_reads[3 * k + i][1]["loss"] for i in range(3))
        assert sums["loss"] == pytest.approx(expected, rel=1e-5)
        assert sums["loss"] == pytest.approx(sums["loss_fine"] + sums["loss_coarse"], rel=1e-5)


def test_a_read_empties_the_sums():
    model = TinyNet(batch_norm=True).train()
    stepper = Stepper(model, build_optimizer("adam", model.parameters(), 1e-3), ExponentialWeightedCenterLoss(40),
                      2.0, FP32, CPU, "deferred")
    stepper.step(*batches(1)[0])
    assert stepper.pending == 1
    n, sums = stepper.read()
    assert n == 1 and sums["loss"] > 0 and stepper.pending == 0
    assert stepper.read() == (0, {})


def test_paths_are_checked_and_the_optimizer_takes_each_paths_options():
    model = TinyNet()
    optimizer = build_optimizer("adam", model.parameters(), 1e-3)
    loss = ExponentialWeightedCenterLoss(40)
    with pytest.raises(ValueError, match="not one of"):
        Stepper(model, optimizer, loss, 2.0, FP32, CPU, "fast")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Stepper(model, optimizer, loss, 2.0, FP32, CPU, "graph")
    with pytest.raises(ValueError, match="one process"):
        Stepper(model, optimizer, loss, 2.0, FP32, CPU, "deferred", world_size=2)
    assert set(STEP_PATHS) == {"eager", "deferred", "graph", "compile"}
    cuda = torch.device("cuda")
    assert optimizer_settings("graph", "adam", cuda) == {"fused": True, "capturable": True}
    assert optimizer_settings("compile", "adam", cuda) == {"fused": True}
    assert optimizer_settings("eager", "adam", cuda) == {} == optimizer_settings("deferred", "adam", CPU)
    assert optimizer_settings("graph", "adadelta", cuda) == {}
    with pytest.raises(ValueError, match="Adam only"):
        build_optimizer("adadelta", model.parameters(), 1.0, fused=True)
    assert isinstance(build_optimizer("adadelta", model.parameters(), 1e-4), torch.optim.Adadelta)
    with pytest.raises(ValueError, match="optimizer 'sgd' is not one of 'adam', 'adadelta'"):
        build_optimizer("sgd", model.parameters(), 1e-4)


def test_make_stepper_builds_the_paths_optimizer_and_loads_a_saved_state():
    model = TinyNet()
    loss = ExponentialWeightedCenterLoss(40)
    first = make_stepper(model, loss, FP32, CPU, "deferred", optimizer="adam", lr=1e-2, sigma_px=2.0)
    assert (first.path, first.sigma_px, first.model) == ("deferred", 2.0, model)
    assert isinstance(first.optimizer, torch.optim.Adam) and first.optimizer.param_groups[0]["lr"] == 1e-2
    first.step(*batches(1)[0])
    saved = first.optimizer.state_dict()
    again = make_stepper(model, loss, FP32, CPU, "eager", optimizer="adam", lr=1e-2, sigma_px=2.0,
                         optimizer_state=saved)
    torch.testing.assert_close(again.optimizer.state_dict()["state"], saved["state"], rtol=0, atol=0)
    adadelta = make_stepper(model, loss, FP32, CPU, optimizer="adadelta", lr=1.0, sigma_px=2.0)
    assert isinstance(adadelta.optimizer, torch.optim.Adadelta) and adadelta.path == "eager"


def test_a_checkpoints_optimizer_options_give_way_to_the_paths():
    """A checkpoint brings back the options it was saved with; the stepper sets its path's again."""
    model = TinyNet()
    saved = build_optimizer("adam", model.parameters(), 1e-3)
    saved.param_groups[0]["capturable"] = True  # as saved by a graph-path run
    optimizer = build_optimizer("adam", model.parameters(), 1e-3)
    optimizer.load_state_dict(saved.state_dict())
    assert optimizer.param_groups[0]["capturable"] is True
    stepper = Stepper(model, optimizer, ExponentialWeightedCenterLoss(40), 2.0, FP32, CPU, "eager")
    assert optimizer.param_groups[0]["capturable"] is False and optimizer.param_groups[0]["fused"] is False
    stepper.set_lr(0.5)
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_device_constants_are_made_once_and_usable_for_training():
    a = device_constant((0.5, 2.0), CPU, torch.float32)
    assert a is device_constant((0.5, 2.0), CPU, torch.float32)
    with torch.inference_mode():
        b = device_constant((1.5, 3.0), CPU, torch.float32)
    assert not b.is_inference()  # made under inference mode, still usable by a training step
    torch.testing.assert_close(b, torch.tensor([1.5, 3.0]))


OPTS = TrainOptions(epochs=2, sigma_px=2.0, lr=1e-2, lr_milestones=(1,), batch_size=2, seed=7, log_every_steps=2)


def test_the_engine_on_the_deferred_path_logs_and_trains_as_on_the_eager_one(tmp_path):
    runs = {}
    for path in ("eager", "deferred"):
        torch.manual_seed(0)
        model = TinyNet(batch_norm=True)
        logged = []
        settings = RunSettings(fingerprint="f", progress=False, log=lambda s, v: logged.append((s, v)),
                               step_path=path, read_every=5)
        result = train(model, RandomLandmarks(), ExponentialWeightedCenterLoss(40), OPTS, tmp_path / path, settings)
        runs[path] = model, logged, result
    (eager, eager_log, eager_result), (deferred, deferred_log, deferred_result) = runs["eager"], runs["deferred"]
    assert deferred_result.step_path == "deferred" and eager_result.step_path == "eager"
    for (name, a), b in zip(eager.state_dict().items(), deferred.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert [s for s, _ in deferred_log] == [s for s, _ in eager_log] and len(eager_log) >= 3
    for (_, a), (_, b) in zip(eager_log, deferred_log):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5)
    for a, b in zip(eager_result.history, deferred_result.history):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["lr"] == a["lr"]


def test_a_bad_loss_on_the_deferred_path_stops_at_the_next_read(tmp_path):
    class Exploding(ExponentialWeightedCenterLoss):
        calls = 0

        def forward(self, pred, target):
            Exploding.calls += 1
            value = super().forward(pred, target)
            return value * math.inf if Exploding.calls > 6 else value  # from the 4th step on (two heads a step)

    # 3 steps an epoch, read at each epoch's end and every 5 steps: the read after global step 5 sees steps 4-5
    options = TrainOptions(epochs=3, sigma_px=2.0, lr=1e-2, batch_size=2, seed=7)
    with pytest.raises(TrainingDiverged, match=r"at epoch 2, one of steps 1\.\.2"):
        train(TinyNet(), RandomLandmarks(), Exploding(40), options, tmp_path,
              RunSettings(fingerprint="f", progress=False, step_path="deferred", read_every=5))


# ---- the device settings and the CUDA graph's warm-up and capture, on CPU with fakes ---------------------------


def test_every_stepper_sets_the_backends_as_training_does(monkeypatch):
    """make_stepper (bench, replicate and the engine) tunes the backends for its device, not the engine alone."""
    from farnet.training import steps

    tuned = []
    monkeypatch.setattr(steps, "tune_backends", tuned.append)
    make_stepper(TinyNet(), ExponentialWeightedCenterLoss(40), FP32, CPU, "deferred", optimizer="adam", lr=1e-3,
                 sigma_px=2.0)
    assert tuned == [CPU]


def test_a_stepper_on_cuda_switches_cudnn_autotuning_on(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model = TinyNet()
    # an eager stepper for a CUDA device is made without touching the device (its optimiser keeps host options)
    Stepper(model, build_optimizer("adam", model.parameters(), 1e-3), ExponentialWeightedCenterLoss(40), 2.0, FP32,
            torch.device("cuda"), "eager")
    assert torch.backends.cudnn.benchmark is True


class FakeStream:
    """Stands for torch.cuda.Stream: counts the streams made."""

    made = 0

    def __init__(self, device=None):
        FakeStream.made += 1

    def wait_stream(self, other):
        pass


class FakeGraph:
    captures: list[dict] = []

    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


class fake_capture:
    """Stands for torch.cuda.graph: records its options and runs the body once (as the capture would record it)."""

    def __init__(self, graph, **options):
        FakeGraph.captures.append(options)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def graph_stepper(monkeypatch, warmup_steps=2):
    """A graph-path stepper on the CPU: torch.cuda's streams and graphs replaced by fakes (the path's logic only)."""
    import contextlib
    from types import SimpleNamespace

    FakeStream.made, FakeGraph.captures = 0, []
    current = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_capture)
    model = TinyNet().train()
    stepper = Stepper(model, build_optimizer("adam", model.parameters(), 1e-3), ExponentialWeightedCenterLoss(40),
                      2.0, FP32, CPU, "deferred", warmup_steps=warmup_steps)
    stepper.path = "graph"  # the CPU cannot make a graph stepper; its steps below use the fakes
    return stepper


def test_graph_warmup_steps_share_one_side_stream(monkeypatch):
    stepper = graph_stepper(monkeypatch, warmup_steps=3)
    data = batches(3)
    for images, points in data:
        stepper.step(images, points)
    assert FakeStream.made == 1 and stepper._graph is None
    assert stepper.read()[0] == 3


def test_the_graph_is_captured_once_in_thread_local_mode_and_then_replayed(monkeypatch):
    stepper = graph_stepper(monkeypatch, warmup_steps=1)
    for images, points in batches(4):
        stepper.step(images, points)
    assert FakeGraph.captures == [{"capture_error_mode": "thread_local"}]
    assert stepper._graph.replays == 3  # steps 2-4: the capture records the step, each replay runs it
    short = batches(1)[0][0][:1], batches(1)[0][1][:1]
    stepper.step(*short)  # another batch size runs deferred, outside the graph
    assert stepper._graph.replays == 3 and len(FakeGraph.captures) == 1
