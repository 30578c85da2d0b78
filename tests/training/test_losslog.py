"""The loss log (farnet.training.losslog): windows of exactly ``every_steps`` steps with the lr, or one record
per epoch, and the monitor's values after its epochs."""

import pytest
import torch

from farnet.training.losslog import LossLog


def optimizer(lr=0.5):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_a_window_logs_the_mean_of_its_steps_and_the_lr():
    logged = []
    log = LossLog(lambda step, values: logged.append((step, values)), 4, optimizer())
    log.add(1, 1, {"loss": 2.0, "loss_fine": 1.5})
    log.add(3, 2, {"loss": 4.0, "loss_fine": 3.0})  # two steps read at once (off the eager path)
    assert logged == []
    log.add(4, 1, {"loss": 6.0, "loss_fine": 4.5})
    assert logged == [(4, {"lr": 0.5, "train/loss": 3.0, "train/loss_fine": pytest.approx(2.25)})]
    log.add(8, 4, {"loss": 4.0, "loss_fine": 2.0})  # the next window starts empty
    assert logged[1] == (8, {"lr": 0.5, "train/loss": 1.0, "train/loss_fine": 0.5})
    log.log_epoch(8, {"epoch": 2, "lr": 0.5, "loss": 1.0, "test1/mre_mm": 3.5})  # the losses are in the windows
    assert logged[2] == (8, {"test1/mre_mm": 3.5})


def test_without_windows_each_epoch_is_logged():
    logged = []
    log = LossLog(lambda step, values: logged.append((step, values)), 0, optimizer())
    log.add(3, 3, {"loss": 9.0})  # kept for the epoch's record only
    log.log_epoch(3, {"epoch": 1, "lr": 0.5, "loss": 3.0, "loss_coarse": 1.0, "val_score": 2.0})
    assert logged == [(3, {"lr": 0.5, "train/loss": 3.0, "train/loss_coarse": 1.0})]
    LossLog(None, 2, optimizer()).add(2, 2, {"loss": 1.0})  # rank 1 has no log
