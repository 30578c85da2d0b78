"""SIGINT/SIGTERM during training: a resumable checkpoint mid-epoch, and a resumed run equals an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from farnet.training.engine import RunSettings, TrainOptions, train
from farnet.core.errors import TrainingInterrupted
from farnet.training import distributed
from farnet.training.interrupt import STOP_CHECK_EVERY, StopOnSignal, stop_check_due, stop_requested
from farnet.training.losses import ExponentialWeightedCenterLoss
from tiny_training import Data, Tiny


# ---- the context manager ---------------------------------------------------------------------------------------


def test_handlers_set_a_flag_and_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="second signal SIGINT"):
        with StopOnSignal() as stop:
            assert signal.getsignal(signal.SIGTERM) is not before
            assert not stop.requested and not stop_requested()
            signal.raise_signal(signal.SIGTERM)  # would end the process without the handler
            assert stop.requested and stop_requested()
            signal.raise_signal(signal.SIGINT)  # a second signal: stop now
    assert signal.getsignal(signal.SIGTERM) is before
    assert not stop_requested()


def test_a_signal_never_acted_on_is_delivered_on_exit():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):  # Python's own SIGINT handler, restored on exit, sees it
            with StopOnSignal():
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


# ---- in-process: interrupt at chosen steps, resume, compare ----------------------------------------------------


OPTS = TrainOptions(epochs=3, sigma_px=2.0, lr=1e-2, lr_milestones=(2,), batch_size=2, seed=7)


def run(out, data, seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    result = train(model, data, ExponentialWeightedCenterLoss(40), OPTS, out,
                   RunSettings(fingerprint="f", progress=False))
    return model, result


@pytest.mark.parametrize("epoch, step", [(0, 1), (0, 4), (1, 3), (2, 4)])
def test_interrupted_at_any_step_resumes_to_the_same_weights(tmp_path, epoch, step):
    full, full_result = run(tmp_path / "full", Data())
    with pytest.raises(TrainingInterrupted, match=rf"SIGINT received: stopped after step {step} of epoch "
                                                  rf"{epoch + 1}; resumable checkpoint .*checkpoint\.pt"):
        run(tmp_path / "cut", Data(at=(epoch, step)))
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (epoch, step)
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["step_in_epoch"] == step
    assert not list((tmp_path / "cut").glob("*.tmp"))
    resumed, result = run(tmp_path / "cut", Data(), seed=123)  # other initial weights: all from the checkpoint
    assert result.resumed_from == epoch
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert result.history == full_result.history  # the interrupted epoch's mean loss counts every step once


# ---- data-parallel ranks agree to stop every few steps (one process, its world size and all-reduce faked) ------


def test_ranks_check_the_stop_flag_every_few_steps_and_at_each_epochs_end():
    assert STOP_CHECK_EVERY == 10
    assert all(stop_check_due(n, epoch_end=False) for n in range(1, 25))  # one process: after every step
    assert [n for n in range(1, 25) if stop_check_due(n, n % 7 == 0, world_size=2)] == [7, 10, 14, 20, 21]


def test_stop_requested_takes_the_maximum_over_the_ranks(monkeypatch):
    reduced = []

    def all_reduce(tensor, op):  # another rank was signalled
        reduced.append(op)
        tensor.fill_(1)

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    assert stop_requested("cpu", world_size=1) is False and reduced == []  # one process: its own flag, no collective
    assert stop_requested("cpu", world_size=2) is True and reduced == [torch.distributed.ReduceOp.MAX]


class CountingLoss(ExponentialWeightedCenterLoss):
    """Counts the steps taken (two heads a step)."""

    def __init__(self):
        super().__init__(40)
        self.calls = 0

    def forward(self, pred, target):
        self.calls += 1
        return super().forward(pred, target)


def test_the_engine_synchronises_ranks_on_the_stop_flag_only_on_check_steps(tmp_path, monkeypatch):
    """Rank 0 of two: 7 items, batch 1 -> 4 steps an epoch; the flag is all-reduced after steps 4, 8, 10 and 12.
    Another rank's signal, seen at the check after step 10, stops this rank there too."""
    loss, checked = CountingLoss(), []

    def all_reduce(tensor, op):
        checked.append(loss.calls // 2)
        tensor.fill_(1 if signalled_at == checked[-1] else 0)

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(distributed, "wrap", lambda model, device: model)
    monkeypatch.setattr(distributed, "mean_across_ranks", lambda value: value.detach())  # this rank's loss
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    options = TrainOptions(epochs=3, sigma_px=2.0, lr=1e-2, batch_size=1, seed=7)
    settings = RunSettings(fingerprint="f", progress=False, rank=0, world_size=2)
    signalled_at = None
    result = train(Tiny(), Data(), loss, options, tmp_path / "full", settings)
    assert result.steps == 12 and checked == [4, 8, 10, 12]
    loss.calls, checked, signalled_at = 0, [], 10
    with pytest.raises(TrainingInterrupted, match="another rank was signalled: stopped after step 2 of epoch 3"):
        train(Tiny(), Data(), loss, options, tmp_path / "cut", settings)
    assert checked == [4, 8, 10]
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"]) == (2, 2)


# ---- a real process killed with SIGTERM -----------------------------------------------------------------------

SCRIPT = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    from farnet.training.engine import RunSettings, TrainOptions, train
    from farnet.core.errors import TrainingInterrupted
    from farnet.training.losses import ExponentialWeightedCenterLoss
    from tiny_training import Tiny  # tests/ is on PYTHONPATH

    class Data(torch.utils.data.Dataset):
        def __init__(self, delay_s):
            g = torch.Generator().manual_seed(1)
            self.images = torch.randint(0, 256, (24, 1, 16, 16), generator=g, dtype=torch.uint8)
            self.points = torch.rand(24, 2, 2, generator=g) * 15
            self.delay_s = delay_s

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            time.sleep(self.delay_s)  # slow steps, so the signal lands mid-epoch
            return self.images[i], self.points[i], i

    out, weights, delay_s = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    torch.manual_seed(0)
    model = Tiny()
    options = TrainOptions(epochs=4, sigma_px=2.0, lr=1e-2, lr_milestones=(2,), batch_size=2, seed=7)
    try:
        result = train(model, Data(delay_s), ExponentialWeightedCenterLoss(40), options, out,
                       RunSettings(fingerprint="f", progress=False))
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        sys.exit(exc.exit_code)
    torch.save(model.state_dict(), weights)
    print(json.dumps({"resumed_from": result.resumed_from, "history": result.history}))
''')


def test_sigterm_kills_a_real_training_process_and_a_new_process_resumes(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    tests = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, (tests, os.environ.get("PYTHONPATH"))))}

    def start(name, delay_s):
        return subprocess.Popen([sys.executable, str(script), str(tmp_path / name), str(tmp_path / f"{name}.pt"),
                                 str(delay_s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    full = start("full", 0.0)  # the uninterrupted reference, alongside
    victim = start("cut", 0.01)  # 12 steps of >= 20 ms per epoch
    side = tmp_path / "cut" / "checkpoint.json"
    deadline = time.monotonic() + 40
    while not (side.is_file() and json.loads(side.read_text() or "{}").get("epoch", 0) >= 1):
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 40 s"
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)  # mid-run: epoch 1 saved, epoch 2 in progress
    _, err = victim.communicate(timeout=30)
    assert victim.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received: stopped after step" in err
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert 1 <= state["epoch"] < 4 and 1 <= state["step_in_epoch"] <= 12
    assert not (tmp_path / "cut.pt").exists()

    resumed = start("cut", 0.0)  # a new process, the same command
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    assert json.loads(out)["resumed_from"] == state["epoch"]
    out_full, err_full = full.communicate(timeout=60)
    assert full.returncode == 0, err_full
    assert json.loads(out)["history"] == json.loads(out_full)["history"]
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "cut.pt", weights_only=True)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


# ---- a second signal: stop at once, with that signal's exit status ---------------------------------------------

def test_a_second_sigterm_exits_with_sigterms_status():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        with StopOnSignal():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
    assert exited.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before and not stop_requested()


TWO_SIGNALS = textwrap.dedent('''
    import sys, time
    from pathlib import Path

    from farnet.training.interrupt import StopOnSignal

    try:
        with StopOnSignal():
            print("ready", flush=True)
            time.sleep(60)  # a step that will not finish: the first signal only asks to stop after it
    finally:
        Path(sys.argv[1]).write_text("cleaned up")
''')


def test_two_quick_sigterms_end_a_real_process_with_sigterms_code(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(TWO_SIGNALS)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "done")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err  # was -SIGINT: a KeyboardInterrupt
    assert "second signal SIGTERM while stopping" in err and "Traceback" not in err
    assert (tmp_path / "done").read_text() == "cleaned up"
