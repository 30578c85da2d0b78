"""The GPU lock of runs that share a node: exclusive, freed by a crash, waited for; on fake device lists."""

import multiprocessing
import os
import signal
import time

import pytest
import torch

from farnet.core import devices
from farnet.core.errors import ConfigError

CTX = multiprocessing.get_context("fork")  # a worker starts in milliseconds; the lock needs no fresh interpreter


def _hold(names, folder, seconds, out, poll_s=0.02, start=None):
    """A worker: take a device, record (name, taken, freed) in ``out``, hold it ``seconds``; with ``start`` (a
    barrier), only once every worker has started, so that a loaded machine's slow forks cannot spread them out."""
    if start is not None:
        start.wait(timeout=30)
    claim = devices.claim_device(names, folder=folder, holder=f"worker {os.getpid()}", poll_s=poll_s,
                                 log=lambda message: out.put(("log", message)))
    taken = time.monotonic()
    time.sleep(seconds)
    out.put((claim.name, taken, time.monotonic()))
    claim.release()


def _drain(queue, count, timeout=30):
    return [queue.get(timeout=timeout) for _ in range(count)]


def _assert_never_shared(spans):
    """No two spans on the same device overlap."""
    for name in {s[0] for s in spans}:
        mine = sorted(s[1:] for s in spans if s[0] == name)
        for (_, freed), (taken, _) in zip(mine, mine[1:]):
            assert taken >= freed, f"device {name} held twice at once: {mine}"


def test_workers_never_share_a_device(tmp_path):
    names = ["0", "1", "2"]
    out = CTX.Queue()
    workers = [CTX.Process(target=_hold, args=(names, tmp_path, 0.5, out)) for _ in range(3)]
    for w in workers:
        w.start()
    spans = [r for r in _drain(out, 3) if r[0] != "log"]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    assert sorted(s[0] for s in spans) == names  # three workers, three devices held at the same time: one each


def test_more_workers_than_devices_wait_and_all_finish(tmp_path):
    out = CTX.Queue()
    start = CTX.Barrier(5)
    workers = [CTX.Process(target=_hold, args=(["0", "1"], tmp_path, 0.5, out), kwargs={"start": start})
               for _ in range(5)]
    for w in workers:
        w.start()
    records = []
    while sum(r[0] != "log" for r in records) < 5:
        records.append(out.get(timeout=30))
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    spans = [r for r in records if r[0] != "log"]
    _assert_never_shared(spans)
    waits = [r[1] for r in records if r[0] == "log"]
    assert waits and all("all 2 GPUs are taken" in line and "waits for one to be freed" in line for line in waits)


def test_a_killed_holder_frees_its_device_for_a_waiting_run(tmp_path):
    out = CTX.Queue()
    holders = [CTX.Process(target=_hold, args=(["0", "1"], tmp_path, 60, out)) for _ in range(2)]
    for h in holders:
        h.start()
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("gpu-*.lock"))) < 2 or any(
            devices._holder(p) == "?" for p in tmp_path.glob("gpu-*.lock")):
        assert time.monotonic() < deadline, "the holders did not take both devices"
        time.sleep(0.02)
    time.sleep(0.1)
    waiting = CTX.Process(target=_hold, args=(["0", "1"], tmp_path, 0, out))
    waiting.start()
    assert out.get(timeout=10)[0] == "log"  # it waits: both devices are held
    victim = holders[1]
    victim_device = next(p.stem[len("gpu-"):] for p in tmp_path.glob("gpu-*.lock")
                         if f"pid {victim.pid} " in devices._holder(p))
    os.kill(victim.pid, signal.SIGKILL)  # a crash: no release() runs
    victim.join(timeout=10)
    name, _, _ = out.get(timeout=10)
    waiting.join(timeout=10)
    assert waiting.exitcode == 0 and name == victim_device
    holders[0].kill()
    holders[0].join(timeout=10)


def test_release_frees_the_device_at_once(tmp_path):
    first = devices.claim_device(["a"], folder=tmp_path, log=pytest.fail)
    first.release()
    with devices.claim_device(["a"], folder=tmp_path, log=pytest.fail) as again:
        assert (again.index, again.name) == (0, "a")


@pytest.mark.parametrize("visible, count, names", [
    (None, 3, ["0", "1", "2"]),
    ("2,3", 2, ["2", "3"]),
    (" 5 , 1 ", 2, ["5", "1"]),
    ("0,1,9", 2, ["0", "1"]),  # CUDA stops at the first device it cannot use
    ("GPU-aa-1,GPU-bb-2", 2, ["GPU-aa-1", "GPU-bb-2"]),
])
def test_visible_devices_name_each_torch_index(visible, count, names):
    assert devices.visible_devices(count, visible) == names


def test_visible_devices_refuse_a_list_shorter_than_torch_sees():
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES='3' lists 1 device"):
        devices.visible_devices(2, "3")


def test_claim_needs_a_device(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA device to claim"):
        devices.claim_device([], folder=tmp_path)


def test_runs_with_different_visible_sets_agree_on_the_physical_device(tmp_path, monkeypatch):
    """GPU 3 of the node is cuda:1 for a run that sees "2,3" and cuda:0 for one that sees "3,4": one lock."""
    monkeypatch.delenv("FARNET_DEVICE", raising=False)
    cuda = torch.device("cuda")
    with devices.device_for_run(cuda, 1, count=2, visible="2,3", folder=tmp_path, log=lambda m: None)[1]:
        with devices.claim_device(["3"], folder=tmp_path, log=pytest.fail) as three:  # 2 taken, 3 still free
            device, claim = devices.device_for_run(cuda, 1, count=2, visible="3,4", folder=tmp_path,
                                                   log=lambda m: None)
            assert (three.name, device, claim.name) == ("3", torch.device("cuda", 1), "4")
            claim.release()


@pytest.mark.parametrize("device, world_size, count, env", [
    ("cpu", 1, 8, None),          # the CPU is never locked
    ("cuda", 1, 1, None),         # one GPU: nothing to choose
    ("cuda", 2, 8, None),         # torchrun assigns its ranks' devices
    ("cuda", 1, 8, "cuda"),       # FARNET_DEVICE wins
    ("cuda:3", 1, 8, None),       # a device already chosen
])
def test_device_for_run_locks_only_a_plain_cuda_run_on_a_multi_gpu_node(device, world_size, count, env, tmp_path,
                                                                         monkeypatch):
    if env is None:
        monkeypatch.delenv("FARNET_DEVICE", raising=False)
    else:
        monkeypatch.setenv("FARNET_DEVICE", env)
    chosen, claim = devices.device_for_run(torch.device(device), world_size, count=count, visible=None,
                                           folder=tmp_path, log=pytest.fail)
    assert (chosen, claim) == (torch.device(device), None)
    assert not list(tmp_path.iterdir())


def test_device_for_run_takes_a_free_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("FARNET_DEVICE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    lines = []
    with devices.claim_device(["0"], folder=tmp_path, log=pytest.fail):
        device, claim = devices.device_for_run(torch.device("cuda"), 1, holder="train farnet", count=2,
                                               folder=tmp_path, log=lines.append)
    assert device == torch.device("cuda", 1) and claim.name == "1"
    assert lines == [f"train farnet: took GPU 1 as cuda:1 (lock {tmp_path / 'gpu-1.lock'})"]
    assert "train farnet (pid" in (tmp_path / "gpu-1.lock").read_text()
    claim.release()


def test_lock_folder_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FARNET_GPU_LOCKS", str(tmp_path / "locks"))
    assert devices.lock_folder() == tmp_path / "locks"
    monkeypatch.delenv("FARNET_GPU_LOCKS")
    assert devices.lock_folder().name == "farnet-gpu-locks"


def test_the_train_stage_holds_its_gpu_for_the_whole_run_and_records_it(tmp_path, monkeypatch):
    """train_run on the CPU, its device taken through a fake two-GPU list: held while it trains, freed after."""
    from dataclasses import replace

    from farnet.commands.protocol import replication_params
    from farnet.stages import train as train_stage
    from helpers import write_committed_params, write_prepared

    monkeypatch.setenv("FARNET_DEVICE", "cpu")
    locks = tmp_path / "locks"
    real = devices.device_for_run

    def two_fake_gpus(device, world_size, **kwargs):  # the CPU stands in for the GPU it takes
        taken, claim = real(torch.device("cuda"), world_size, count=2, visible="6,7", folder=locks,
                            log=lambda m: None, holder=kwargs.get("holder", ""))
        assert taken == torch.device("cuda", 0)
        return device, claim

    monkeypatch.delenv("FARNET_DEVICE")  # device_for_run locks only without it; init_from_env has read it
    monkeypatch.setattr(train_stage.devices, "device_for_run", two_fake_gpus)
    monkeypatch.setattr(train_stage.distributed, "init_from_env", lambda: (0, 1, torch.device("cpu")))
    held = []

    def log(step, values):
        fd = devices._try_lock(locks / "gpu-6.lock", "test")
        held.append(fd is None)
        if fd is not None:
            os.close(fd)

    write_prepared(tmp_path, input_hw=(64, 64), k=3)
    params, _ = replication_params(write_committed_params(tmp_path), "farnet", (64, 64))
    params = replace(params, train=replace(params.train, epochs=1, log_every_steps=1))
    info = train_stage.train_run(params, tmp_path / "prepared", tmp_path / "model", None, progress=False, log=log)
    assert held and all(held)  # every step ran while the run held GPU 6
    assert info["gpu"] == "6"
    with devices.claim_device(["6"], folder=locks, log=pytest.fail):  # freed at the end of the run
        pass
