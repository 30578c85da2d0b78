"""The resumable checkpoint (farnet.training.resume): one writer for the end of an epoch and for a stop inside
one, its side file, where a run resumes, and a fresh start for another fingerprint."""

import json

import pytest
import torch

from farnet.core.errors import DataError
from farnet.training.resume import CheckpointWriter, Progress, load_progress, resumable_point
from helpers import TinyNet

CPU = torch.device("cpu")


def saved_run(tmp_path, progress):
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    writer = CheckpointWriter(tmp_path / "checkpoint.pt", "f", rank=0)
    writer.write(model, optimizer, progress, {"epochs": 4, "lr_milestones": [2], "reduced_by": "step limit"})
    return model, optimizer, writer


def test_the_end_of_an_epoch_is_written_and_resumed(tmp_path):
    progress = Progress(epoch=2, history=[{"epoch": 1}, {"epoch": 2}], wall_s=3.5, best_epoch=1, best_score=0.5)
    model, optimizer, writer = saved_run(tmp_path, progress)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert list(saved) == ["model", "optimizer", "epoch", "fingerprint", "history", "wall_s", "best_epoch",
                           "best_score", "schedule"]
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == {"fingerprint": "f", "epoch": 2}
    assert resumable_point(tmp_path, "f") == (2, 0) and resumable_point(tmp_path, "g") == (0, 0)
    assert writer.saved_epoch == 2 and writer.last_good() == f"{tmp_path / 'checkpoint.pt'} (epoch 2)"
    fresh = TinyNet()
    loaded, optimizer_state = load_progress(tmp_path / "checkpoint.pt", "f", fresh, CPU, rank=0)
    assert loaded == Progress(epoch=2, history=progress.history, wall_s=3.5, best_epoch=1, best_score=0.5,
                              schedule={"epochs": 4, "lr_milestones": [2], "reduced_by": "step limit"})
    assert optimizer_state == optimizer.state_dict()
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_stop_inside_an_epoch_keeps_its_steps_and_their_loss_sums(tmp_path):
    progress = Progress(epoch=1, history=[{"epoch": 1}], step_in_epoch=3, epoch_sums={"loss": 1.5})
    saved_run(tmp_path, progress)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"], saved["epoch_sums"]) == (1, 3, {"loss": 1.5})
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == {"fingerprint": "f", "epoch": 1,
                                                                      "step_in_epoch": 3}
    assert resumable_point(tmp_path, "f") == (1, 3)
    loaded, _ = load_progress(tmp_path / "checkpoint.pt", "f", TinyNet(), CPU, rank=0)
    assert (loaded.epoch, loaded.step_in_epoch, loaded.epoch_sums) == (1, 3, {"loss": 1.5})


def test_another_fingerprint_or_no_checkpoint_starts_afresh(tmp_path):
    assert load_progress(tmp_path / "checkpoint.pt", "f", TinyNet(), CPU, rank=0) == (Progress(), None)
    assert CheckpointWriter(tmp_path / "checkpoint.pt", "f", 0).last_good().endswith("(none written yet)")
    saved_run(tmp_path, Progress(epoch=1))
    assert load_progress(tmp_path / "checkpoint.pt", "other", TinyNet(), CPU, rank=1) == (Progress(), None)


def test_the_best_weights_go_beside_the_checkpoint(tmp_path):
    model = TinyNet()
    CheckpointWriter(tmp_path / "checkpoint.pt", "f", rank=1).write_best(model, 3)  # only rank 0 writes
    assert not (tmp_path / "best.pt").exists()
    CheckpointWriter(tmp_path / "checkpoint.pt", "f", rank=0).write_best(model, 3)
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 3


def test_a_corrupt_side_file_is_named(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "checkpoint.json").write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(DataError, match=r"checkpoint\.json: not the checkpoint's side file"):
        resumable_point(tmp_path, "f")
