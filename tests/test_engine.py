import pytest
import torch
from torch import nn

import json
from dataclasses import replace

from farnet.training.engine import (TrainBudget, TrainOptions, build_optimizer, heatmap_loss, lr_at, resumable_epoch,
                           scheduled_lr, shortened_schedule, train)
from farnet.core.fastpath import memory_format_of
from farnet.evaluation.heatmaps import encode_heatmaps
from farnet.core.errors import DataError, TrainingDiverged
from farnet.training.losses import ExponentialWeightedCenterLoss
from helpers import RandomLandmarks, TinyNet


def Tiny():
    return TinyNet(batch_norm=True)


Data = RandomLandmarks


def make(seed=0):
    torch.manual_seed(seed)
    return Tiny()


OPTS = TrainOptions(epochs=3, sigma_px=2.0, lr=1e-2, lr_milestones=(2,), batch_size=2, seed=7)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    full = make()
    train(full, Data(), ExponentialWeightedCenterLoss(40), OPTS, tmp_path / "full", fingerprint="f", progress=False)

    class Interrupt(Exception):
        pass

    def crash_in_epoch_3(step, values):  # called before epoch 3's checkpoint: epoch 2's is the last on disk
        if step == 3 * 3:  # 5 items in batches of 2: 3 steps an epoch
            raise Interrupt

    with pytest.raises(Interrupt):
        train(make(), Data(), ExponentialWeightedCenterLoss(40), OPTS, tmp_path / "resumed", fingerprint="f",
              log=crash_in_epoch_3, progress=False)
    assert resumable_epoch(tmp_path / "resumed", "f") == 2
    resumed = make(seed=123)  # other initial weights: everything must come from the checkpoint
    result = train(resumed, Data(), ExponentialWeightedCenterLoss(40), OPTS, tmp_path / "resumed", fingerprint="f",
                   progress=False)
    assert result.resumed_from == 2
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_other_fingerprint_starts_afresh(tmp_path):
    train(make(), Data(), ExponentialWeightedCenterLoss(40), OPTS, tmp_path, fingerprint="a", progress=False)
    assert resumable_epoch(tmp_path, "a") == 3
    assert resumable_epoch(tmp_path, "b") == 0
    result = train(make(), Data(), ExponentialWeightedCenterLoss(40), OPTS, tmp_path, fingerprint="b", progress=False)
    assert result.resumed_from == 0 and len(result.history) == 3


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = make()
    opts = TrainOptions(epochs=3, sigma_px=2.0, batch_size=5)
    train(model, Data(), ExponentialWeightedCenterLoss(40), opts.__class__(**{**opts.__dict__, "epochs": 1}),
          tmp_path, fingerprint="x", progress=False)
    good = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    with torch.no_grad():
        model.fine.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 1.*checkpoint\.pt"):
        train(model, Data(), ExponentialWeightedCenterLoss(40), opts, tmp_path, fingerprint="y", progress=False)
    kept = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    torch.testing.assert_close(kept["fine.weight"], good["fine.weight"])


def test_loss_decreases_and_log_is_called(tmp_path):
    records = []
    opts = TrainOptions(epochs=4, sigma_px=2.0, lr=5e-2, batch_size=5)
    result = train(make(), Data(), ExponentialWeightedCenterLoss(40), opts, tmp_path, fingerprint="z",
                   progress=False, log=lambda step, values: records.append((step, values)))
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
    result = train(make(), Data(), ExponentialWeightedCenterLoss(40), opts, tmp_path, fingerprint="m",
                   progress=False, log=lambda step, values: records.append((step, values)), monitor=monitor)
    loss_steps = [step for step, values in records if "train/loss" in values]
    assert loss_steps == list(range(2, 26, 2))  # 25 steps, logged every 2
    monitored = [(step, values["test1/mre_mm"]) for step, values in records if "test1/mre_mm" in values]
    assert monitored == [(10, 9.0), (20, 8.0), (25, 7.0)]  # epochs 2, 4 and the last
    assert calls == [False, False, False]  # in eval mode
    assert [r.get("test1/mre_mm") for r in result.history] == [None, 9.0, None, 8.0, 7.0]


def test_mid_epoch_resume_records_the_step(tmp_path):
    opts = TrainOptions(epochs=2, sigma_px=2.0, batch_size=1, checkpoint_every=1)
    train(make(), Data(), ExponentialWeightedCenterLoss(40), replace(opts, epochs=1), tmp_path, fingerprint="s",
          progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    saved["step_in_epoch"] = 3  # as an interruption after step 3 of epoch 2 leaves it
    torch.save(saved, tmp_path / "checkpoint.pt")
    result = train(make(), Data(), ExponentialWeightedCenterLoss(40), opts, tmp_path, fingerprint="s", progress=False)
    assert (result.resumed_from, result.resumed_from_step) == (1, 5 + 3)


def test_a_corrupt_side_file_is_named(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "checkpoint.json").write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(DataError, match=r"checkpoint\.json: not the checkpoint's side file"):
        resumable_epoch(tmp_path, "f")


def test_bf16_and_channels_last_on_cpu(tmp_path):
    opts = TrainOptions(epochs=1, sigma_px=2.0, precision="bf16", channels_last=True, batch_size=5)
    result = train(make(), Data(), ExponentialWeightedCenterLoss(40), opts, tmp_path, fingerprint="b", progress=False)
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.history[0]["loss"]))


def test_validation_keeps_the_best_weights(tmp_path):
    scores = iter([3.0, 1.0, 2.0])
    result = train(make(), Data(), ExponentialWeightedCenterLoss(40), OPTS, tmp_path, fingerprint="v",
                   validate=lambda m: next(scores), progress=False)
    assert (result.best_epoch, result.best_score) == (2, 1.0)
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2


def test_schedule_and_optimizers():
    assert lr_at(0, 1e-4, (200,), 0.1) == 1e-4
    assert lr_at(199, 1e-4, (200,), 0.1) == 1e-4
    assert lr_at(200, 1e-4, (200,), 0.1) == pytest.approx(1e-5)
    assert lr_at(5, 1.0, (2, 4), 0.5) == 0.25
    cosine = TrainOptions(epochs=1, sigma_px=2.0, lr=1.0, lr_schedule="cosine", warmup_steps=10)
    assert [scheduled_lr(cosine, 0, s, 110) for s in (0, 9)] == [pytest.approx(0.1), pytest.approx(1.0)]
    assert scheduled_lr(cosine, 0, 60, 110) == pytest.approx(0.5)  # half-way through the cosine
    assert scheduled_lr(cosine, 0, 110, 110) == pytest.approx(0.0)
    steps = TrainOptions(epochs=1, sigma_px=2.0, lr=1.0, lr_milestones=(2,), lr_gamma=0.1, warmup_steps=4)
    assert scheduled_lr(steps, 0, 1, 100) == pytest.approx(0.5)  # warm-up also multiplies the step schedule
    assert scheduled_lr(steps, 3, 50, 100) == pytest.approx(0.1)
    params = [nn.Parameter(torch.zeros(1))]
    assert isinstance(build_optimizer("adadelta", params, 1e-4), torch.optim.Adadelta)
    with pytest.raises(ValueError, match="optimizer 'sgd'"):
        build_optimizer("sgd", params, 1e-4)


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

def test_a_shortened_schedule_keeps_the_lr_drop_at_the_same_fraction():
    assert shortened_schedule(300, (200,), 40) == (40, (27,))  # the paper's epoch 200 of 300: 2/3
    assert shortened_schedule(300, (200,), 300) == (300, (200,))
    assert shortened_schedule(300, (200,), 900) == (300, (200,))  # never longer than asked
    assert shortened_schedule(300, (200,), 1) == (1, ())  # a drop at or after the end goes
    assert shortened_schedule(10, (2, 6), 5) == (5, (1, 3))
    with pytest.raises(ValueError, match="budget max_steps must be >= 1"):
        TrainBudget(max_steps=0)


def test_a_step_limit_shortens_the_schedule_and_returns_normally(tmp_path):
    opts = replace(OPTS, epochs=6, lr_milestones=(4,))  # 5 items in batches of 2: 3 steps an epoch
    records = []
    result = train(make(), Data(), ExponentialWeightedCenterLoss(40), opts, tmp_path, fingerprint="l",
                   progress=False, budget=TrainBudget(max_steps=4), log=lambda s, v: records.append(s))
    assert (result.epochs, result.lr_milestones, result.planned_epochs) == (2, (1,), 6)
    assert (result.steps, result.stopped, result.reduced_by) == (4, "steps", "step limit")
    assert [r["epoch"] for r in result.history] == [1, 2] and result.history[1]["steps_in_epoch"] == 1
    assert records == [3, 4]  # each epoch's mean loss, the partial one too


class _Clock:
    """A stand-in for the engine's ``time`` module: the clock moves 1 s per training step (see ``tick``)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def tick(self, step, values):
        self.now += 1.0


def test_a_time_budget_fits_the_schedule_after_its_probe(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("farnet.training.engine.time", clock)
    opts = replace(OPTS, epochs=10, lr_milestones=(6,), log_every_steps=1)  # 30 steps of 1 s
    result = train(make(), Data(), ExponentialWeightedCenterLoss(40), opts, tmp_path, fingerprint="t",
                   progress=False, budget=TrainBudget(seconds=10.0, probe_steps=4), log=clock.tick)
    # after 4 steps: 1 s a step, 6 s left, 95 % of them hold 5 more steps: 9 steps in all, 3 whole epochs
    assert (result.step_s, result.reduced_by, result.stopped) == (1.0, "time budget", None)
    assert (result.epochs, result.lr_milestones, result.steps) == (3, (2,), 9)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["schedule"] == {
        "epochs": 3, "lr_milestones": [2], "reduced_by": "time budget"}


def test_a_run_past_its_time_budget_stops_after_the_step(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("farnet.training.engine.time", clock)
    opts = replace(OPTS, log_every_steps=1)  # 9 steps of 1 s; the probe never ends, the clock stops it
    result = train(make(), Data(), ExponentialWeightedCenterLoss(40), opts, tmp_path, fingerprint="c",
                   progress=False, budget=TrainBudget(seconds=5.0, probe_steps=100), log=clock.tick)
    assert (result.steps, result.stopped, result.reduced_by, result.epochs) == (5, "time", None, 3)
    assert len(result.history) == 2 and result.history[-1]["steps_in_epoch"] == 2
