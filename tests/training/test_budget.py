"""Training budgets (farnet.training.budget): the limits are checked, a step limit shortens the schedule at once,
and a time budget times its probe, then fits the schedule to the time left."""

import pytest

from farnet.training.budget import BudgetClock, TrainBudget
from farnet.training.options import TrainOptions
from farnet.training.schedule import Schedule

OPTIONS = TrainOptions(epochs=10, sigma_px=2.0, lr_milestones=(6,))


@pytest.mark.parametrize("limits, message", [({"seconds": 0.0}, "budget seconds must be > 0, got 0.0"),
                                             ({"max_steps": 0}, "budget max_steps must be >= 1, got 0"),
                                             ({"probe_steps": 1}, "budget probe_steps must be >= 2, got 1"),
                                             ({"margin": 1.5}, r"budget margin must be in \(0, 1\], got 1.5")])
def test_a_bad_limit_is_named(limits, message):
    with pytest.raises(ValueError, match=message):
        TrainBudget(**limits)


def test_a_step_limit_shortens_the_schedule_and_stops_the_run():
    clock = BudgetClock(TrainBudget(max_steps=7))
    schedule = Schedule(OPTIONS, steps_per_epoch=3)
    clock.limit_steps(schedule)
    assert (schedule.epochs, schedule.options.lr_milestones, schedule.reduced_by) == (3, (2,), "step limit")
    assert [clock.over_budget(n, schedule) for n in (6, 7, 9)] == [None, "steps", None]  # 9: the schedule's end
    BudgetClock(None).limit_steps(unlimited := Schedule(OPTIONS, steps_per_epoch=3))
    assert unlimited.reduced_by is None


class _Time:
    """A stand-in for the clock's ``time`` module, set by hand."""

    now = 0.0

    def perf_counter(self):
        return self.now


def test_a_time_budget_times_its_probe_then_fits_the_schedule(monkeypatch):
    fake = _Time()
    monkeypatch.setattr("farnet.training.budget.time", fake)
    clock = BudgetClock(TrainBudget(seconds=20.0, probe_steps=4, margin=1.0))
    clock.first_step = 3  # resumed after one epoch: the probe counts this session's steps
    schedule = Schedule(OPTIONS, steps_per_epoch=3)
    assert [clock.at_probe_edge(n) for n in (4, 5, 7, 8)] == [False, True, True, False]
    fake.now = 2.0
    assert clock.over_budget(5, schedule) is None  # the timed half of the probe begins
    fake.now = 6.0
    assert clock.over_budget(7, schedule) is None  # 2 s a step; 14 s left hold 7 more: 14 steps, 4 epochs
    assert (clock.step_s, schedule.epochs, schedule.reduced_by) == (2.0, 4, "time budget")
    fake.now = 20.0
    assert clock.over_budget(9, schedule) == "time"
