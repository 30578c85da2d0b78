"""The learning-rate schedule and a run's schedule (farnet.training.schedule): the step and cosine schedules with
their warm-up, and a shortened schedule that keeps the lr drop at the same fraction."""

import pytest

from farnet.training.options import TrainOptions
from farnet.training.schedule import Schedule, lr_at, scheduled_lr, shortened_schedule


def test_the_step_schedule_drops_at_each_milestone():
    assert lr_at(0, 1e-4, (200,), 0.1) == 1e-4
    assert lr_at(199, 1e-4, (200,), 0.1) == 1e-4
    assert lr_at(200, 1e-4, (200,), 0.1) == pytest.approx(1e-5)
    assert lr_at(5, 1.0, (2, 4), 0.5) == 0.25


def test_the_cosine_schedule_and_the_warm_up():
    cosine = TrainOptions(epochs=1, sigma_px=2.0, lr=1.0, lr_schedule="cosine", warmup_steps=10)
    assert [scheduled_lr(cosine, 0, s, 110) for s in (0, 9)] == [pytest.approx(0.1), pytest.approx(1.0)]
    assert scheduled_lr(cosine, 0, 60, 110) == pytest.approx(0.5)  # half-way through the cosine
    assert scheduled_lr(cosine, 0, 110, 110) == pytest.approx(0.0)
    steps = TrainOptions(epochs=1, sigma_px=2.0, lr=1.0, lr_milestones=(2,), lr_gamma=0.1, warmup_steps=4)
    assert scheduled_lr(steps, 0, 1, 100) == pytest.approx(0.5)  # warm-up also multiplies the step schedule
    assert scheduled_lr(steps, 3, 50, 100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule 'linear' is not one of 'step', 'cosine'"):
        scheduled_lr(TrainOptions(epochs=1, sigma_px=2.0, lr_schedule="linear"), 0, 0, 1)


def test_a_shortened_schedule_keeps_the_lr_drop_at_the_same_fraction():
    assert shortened_schedule(300, (200,), 40) == (40, (27,))  # the paper's epoch 200 of 300: 2/3
    assert shortened_schedule(300, (200,), 300) == (300, (200,))
    assert shortened_schedule(300, (200,), 900) == (300, (200,))  # never longer than asked
    assert shortened_schedule(300, (200,), 1) == (1, ())  # a drop at or after the end goes
    assert shortened_schedule(10, (2, 6), 5) == (5, (1, 3))


def test_a_runs_schedule_is_shortened_saved_and_restored():
    options = TrainOptions(epochs=300, sigma_px=2.0, lr=1.0, lr_milestones=(200,), lr_gamma=0.1)
    schedule = Schedule(options, steps_per_epoch=150)
    assert (schedule.total_steps, schedule.saved()) == (45_000, None)
    schedule.shorten(300, "time budget")  # the same schedule: nothing is reduced
    assert (schedule.epochs, schedule.reduced_by) == (300, None)
    schedule.shorten(40, "time budget")
    assert (schedule.epochs, schedule.planned_epochs, schedule.total_steps) == (40, 300, 6_000)
    assert schedule.lr(26, 26 * 150) == 1.0 and schedule.lr(27, 27 * 150) == pytest.approx(0.1)
    saved = schedule.saved()
    assert saved == {"epochs": 40, "lr_milestones": [27], "reduced_by": "time budget"}
    restored = Schedule(options, steps_per_epoch=150)
    restored.restore(saved)
    assert (restored.options, restored.reduced_by) == (schedule.options, "time budget")
