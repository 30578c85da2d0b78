"""The training engine (farnet.training.engine): resume, divergence, logs, validation, budgets and the run's
settings, on a tiny two-head network."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from farnet.core.errors import TrainingDiverged
from farnet.core.fastpath import memory_format_of
from farnet.evaluation.heatmaps import encode_heatmaps
from farnet.training.budget import TrainBudget
from farnet.training.engine import RunSettings, make_loader, steps_per_epoch, train
from farnet.training.losses import ExponentialWeightedCenterLoss
from farnet.training.options import TrainOptions
from farnet.training.resume import resumable_point
from farnet.training.steps import heatmap_loss
from helpers import RandomLandmarks, TinyNet


def Tiny():
    return TinyNet(batch_norm=True)


Data = RandomLandmarks


def make(seed=0):
    torch.manual_seed(seed)
    return Tiny()


OPTS = TrainOptions(epochs=3, sigma_px=2.0, lr=1e-2, lr_milestones=(2,), batch_size=2, seed=7)


def fit(model, opts, out, fingerprint, **settings):
    """The engine on the tiny data with the EWC loss, without a progress bar."""
    return train(model, Data(), ExponentialWeightedCenterLoss(40), opts, out,
                 RunSettings(fingerprint=fingerprint, progress=False, **settings))


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    full = make()
    fit(full, OPTS, tmp_path / "full", "f")

    class Interrupt(Exception):
        pass

    def crash_in_epoch_3(step, values):  # called before epoch 3's checkpoint: epoch 2's is the last on disk
        if step == 3 * 3:  # 5 items in batches of 2: 3 steps an epoch
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(make(), OPTS, tmp_path / "resumed", "f", log=crash_in_epoch_3)
    assert resumable_point(tmp_path / "resumed", "f") == (2, 0)
    resumed = make(seed=123)  # other initial weights: everything must come from the checkpoint
    result = fit(resumed, OPTS, tmp_path / "resumed", "f")
    assert result.resumed_from == 2
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_other_fingerprint_starts_afresh(tmp_path):
    fit(make(), OPTS, tmp_path, "a")
    assert resumable_point(tmp_path, "a") == (3, 0)
    assert resumable_point(tmp_path, "b") == (0, 0)
    first = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    result = fit(make(), OPTS, tmp_path, "b")
    assert result.resumed_from == 0 and len(result.history) == 3
    aside = torch.load(tmp_path / "checkpoint-a.pt", weights_only=False)  # run a's work is kept, not overwritten
    assert aside["fingerprint"] == "a" and all(torch.equal(aside["model"][k], first[k]) for k in first)
    assert resumable_point(tmp_path, "b") == (3, 0)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = make()
    opts = TrainOptions(epochs=3, sigma_px=2.0, batch_size=5)
    fit(model, replace(opts, epochs=1), tmp_path, "x")
    good = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    with torch.no_grad():
        model.fine.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 1.*checkpoint\.pt \(none written"):
        fit(model, opts, tmp_path, "y")  # another run: x's checkpoint is set aside, not overwritten
    kept = torch.load(tmp_path / "checkpoint-x.pt", weights_only=True)["model"]
    torch.testing.assert_close(kept["fine.weight"], good["fine.weight"])


def test_loss_decreases_and_log_is_called(tmp_path):
    records = []
    opts = TrainOptions(epochs=4, sigma_px=2.0, lr=5e-2, batch_size=5)
    result = fit(make(), opts, tmp_path, "z", log=lambda step, values: records.append((step, values)))
    assert [step for step, _ in records] == [1, 2, 3, 4]  # one step an epoch: the global-step axis
    assert records[-1][1]["train/loss"] < records[0][1]["train/loss"]
    assert set(records[0][1]) == {"train/loss", "train/loss_fine", "train/loss_coarse", "lr"}
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]


def test_per_step_logging_and_monitor_on_the_step_axis(tmp_path):
    """The cpu profile's machinery: the loss every N steps, a monitor every few epochs (and after the last)."""
    records, calls = [], []

    def monitor(model):
        calls.append(model.training)
        return {"test1/mre_mm": 10.0 - len(calls)}

    opts = TrainOptions(epochs=5, sigma_px=2.0, lr=1e-2, batch_size=1, log_every_steps=2, monitor_every=2)
    result = fit(make(), opts, tmp_path, "m", log=lambda step, values: records.append((step, values)),
                 monitor=monitor)
    loss_steps = [step for step, values in records if "train/loss" in values]
    assert loss_steps == list(range(2, 26, 2))  # 25 steps, logged every 2
    monitored = [(step, values["test1/mre_mm"]) for step, values in records if "test1/mre_mm" in values]
    assert monitored == [(10, 9.0), (20, 8.0), (25, 7.0)]  # epochs 2, 4 and the last
    assert calls == [False, False, False]  # in eval mode
    assert [r.get("test1/mre_mm") for r in result.history] == [None, 9.0, None, 8.0, 7.0]


def test_mid_epoch_resume_records_the_step(tmp_path):
    opts = TrainOptions(epochs=2, sigma_px=2.0, batch_size=1, checkpoint_every=1)
    fit(make(), replace(opts, epochs=1), tmp_path, "s")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    saved["step_in_epoch"] = 3  # as an interruption after step 3 of epoch 2 leaves it
    torch.save(saved, tmp_path / "checkpoint.pt")
    assert resumable_point(tmp_path, "s") == (1, 0)  # the side file was not touched: whole epochs only
    result = fit(make(), opts, tmp_path, "s")
    assert (result.resumed_from, result.resumed_from_step) == (1, 5 + 3)


def test_bf16_and_channels_last_on_cpu(tmp_path):
    opts = TrainOptions(epochs=1, sigma_px=2.0, precision="bf16", channels_last=True, batch_size=5)
    result = fit(make(), opts, tmp_path, "b")
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.history[0]["loss"]))


def test_validation_keeps_the_best_weights(tmp_path):
    scores = iter([3.0, 1.0, 2.0])
    result = fit(make(), OPTS, tmp_path, "v", validate=lambda m: next(scores))
    assert (result.best_epoch, result.best_score) == (2, 1.0)
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2


def test_the_lr_of_each_step_follows_the_schedule(tmp_path):
    opts = replace(OPTS, lr_milestones=(1, 2), lr_gamma=0.5, log_every_steps=1)
    records = []
    fit(make(), opts, tmp_path, "lr", log=lambda step, values: records.append(values["lr"]))
    assert records == pytest.approx([1e-2] * 3 + [5e-3] * 3 + [2.5e-3] * 3)  # 3 steps an epoch, halved twice


@pytest.mark.parametrize("items, batch_size, world_size", [(5, 2, 1), (5, 1, 1), (6, 4, 1), (7, 1, 2), (7, 2, 3)])
def test_steps_per_epoch_is_the_length_of_the_engines_loader(items, batch_size, world_size):
    """The train stage counts a run's steps with it before the engine runs (dvclive's resume point)."""
    options = TrainOptions(epochs=1, sigma_px=2.0, batch_size=batch_size)
    lengths = {len(make_loader(RandomLandmarks(n=items), options, "cpu", rank, world_size)[0])
               for rank in range(world_size)}
    assert lengths == {steps_per_epoch(items, batch_size, world_size)}


def test_run_settings_are_checked():
    with pytest.raises(ValueError, match="read_every must be >= 1, got 0"):
        RunSettings(fingerprint="f", read_every=0)
    with pytest.raises(ValueError, match="a training budget is for one process"):
        RunSettings(fingerprint="f", world_size=2, budget=TrainBudget(max_steps=3))


# ---- the loss target's layout (issue: channels_last prediction vs NCHW target) --------------------------------

def test_the_loss_target_is_built_in_the_predictions_memory_format():
    layouts = []

    class Spy(nn.Module):
        def forward(self, pred, target):
            layouts.append(memory_format_of(target))
            return ((pred - target) ** 2).mean()

    torch.manual_seed(0)
    plain = Tiny().eval()
    fast = Tiny().eval()
    fast.load_state_dict(plain.state_dict())
    fast.to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 16, 16)
    points = torch.tensor([[[3.0, 4.0], [10.0, 12.5]]] * 2)
    expected, _ = heatmap_loss(plain(x), points, (16, 16), 2.0, Spy())
    assert layouts == [torch.contiguous_format] * 2  # fine and coarse head
    got, _ = heatmap_loss(fast(x.contiguous(memory_format=torch.channels_last)), points, (16, 16), 2.0, Spy())
    assert layouts[2:] == [torch.channels_last] * 2
    torch.testing.assert_close(got, expected)
    target = encode_heatmaps(points, (16, 16), 2.0, memory_format=torch.channels_last)
    assert target.is_contiguous(memory_format=torch.channels_last) and not target.is_contiguous()
    torch.testing.assert_close(target, encode_heatmaps(points, (16, 16), 2.0), rtol=0, atol=0)


# ---- budgets: a schedule fitted to the time left, a stop that still returns --------------------------------------

def test_a_step_limit_shortens_the_schedule_and_returns_normally(tmp_path):
    opts = replace(OPTS, epochs=6, lr_milestones=(4,))  # 5 items in batches of 2: 3 steps an epoch
    records = []
    result = fit(make(), opts, tmp_path, "l", budget=TrainBudget(max_steps=4), log=lambda s, v: records.append(s))
    assert (result.epochs, result.lr_milestones, result.planned_epochs) == (2, (1,), 6)
    assert (result.steps, result.stopped, result.reduced_by) == (4, "steps", "step limit")
    assert [r["epoch"] for r in result.history] == [1, 2] and result.history[1]["steps_in_epoch"] == 1
    assert records == [3, 4]  # each epoch's mean loss, the partial one too


class _Clock:
    """A stand-in for the budget clock's ``time`` module: the clock moves 1 s per training step (see ``tick``)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def tick(self, step, values):
        self.now += 1.0


def test_a_time_budget_fits_the_schedule_after_its_probe(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("farnet.training.budget.time", clock)
    opts = replace(OPTS, epochs=10, lr_milestones=(6,), log_every_steps=1)  # 30 steps of 1 s
    result = fit(make(), opts, tmp_path, "t", budget=TrainBudget(seconds=10.0, probe_steps=4), log=clock.tick)
    # after 4 steps: 1 s a step, 6 s left, 95 % of them hold 5 more steps: 9 steps in all, 3 whole epochs
    assert (result.step_s, result.reduced_by, result.stopped) == (1.0, "time budget", None)
    assert (result.epochs, result.lr_milestones, result.steps) == (3, (2,), 9)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["schedule"] == {
        "epochs": 3, "lr_milestones": [2], "reduced_by": "time budget"}


def test_a_run_past_its_time_budget_stops_after_the_step(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("farnet.training.budget.time", clock)
    opts = replace(OPTS, log_every_steps=1)  # 9 steps of 1 s; the probe never ends, the clock stops it
    result = fit(make(), opts, tmp_path, "c", budget=TrainBudget(seconds=5.0, probe_steps=100), log=clock.tick)
    assert (result.steps, result.stopped, result.reduced_by, result.epochs) == (5, "time", None, 3)
    assert len(result.history) == 2 and result.history[-1]["steps_in_epoch"] == 2


def _layouts(model, optimizer):
    """Each parameter's strides and those of its Adam moments: what a monitor must leave as it found them."""
    return [(tuple(p.stride()), *(tuple(optimizer.state[p][k].stride()) for k in ("exp_avg", "exp_avg_sq")))
            for p in model.parameters() if p in optimizer.state]


def test_a_monitor_predicting_with_the_live_model_leaves_its_layout_and_training_unchanged(tmp_path, monkeypatch):
    """The monitor and best_test1 validation run the evaluation's predict_landmarks on the model being trained
    (channels_last on the fast path): it must not move the model to another layout, under a live optimiser
    whose moments keep the old one, nor change what the run trains to."""
    import numpy as np

    from farnet.evaluation.loop import predict_landmarks
    from farnet.training import engine

    steppers = []
    real = engine.make_stepper
    monkeypatch.setattr(engine, "make_stepper", lambda *a, **k: steppers.append(real(*a, **k)) or steppers[-1])
    images = Data().images[:, 0].numpy()
    seen = []

    def monitor(model):
        seen.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4))
        # an input layout other than the weights': the inputs follow it, the weights stay as they are
        pred = predict_landmarks(model, images, device="cpu", precision="fp32", channels_last=False,
                                 decoders=("argmax",), progress=False)["argmax"]
        assert np.isfinite(pred).all() and model.training is False  # the engine put it in eval mode
        return {"test1/mre_mm": 1.0}

    opts = TrainOptions(epochs=4, sigma_px=2.0, lr=1e-2, batch_size=2, channels_last=True, monitor_every=1, seed=3)
    watched, plain = make(), make()
    fit(watched, opts, tmp_path / "watched", "w", monitor=monitor)
    fit(plain, opts, tmp_path / "plain", "p")
    assert seen == [True] * 4  # still channels_last at every monitor after the first
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in watched.parameters() if p.dim() == 4)
    assert _layouts(watched, steppers[0].optimizer) == _layouts(plain, steppers[1].optimizer)
    for a, b in zip(watched.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)  # the monitor changed nothing the run trains to


def test_predict_landmarks_never_moves_the_callers_model():
    import numpy as np

    from farnet.evaluation.loop import predict_landmarks

    model = make().to(memory_format=torch.channels_last).train()
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    predict_landmarks(model, Data().images[:3, 0].numpy(), device="cpu", channels_last=False, progress=False)
    assert model.training and all(m.training for m in model.modules())  # its own mode back
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k
    with pytest.raises(ValueError, match="not cpu: move it first"):
        predict_landmarks(make().to("meta"), np.zeros((1, 16, 16), np.uint8), device="cpu", progress=False)
