"""Tests of farnet.training.distributed and the engine under DDP: two CPU processes (gloo on 127.0.0.1) train exactly as
one process with their combined batch, resume from rank 0's checkpoint on every rank, and stop together when
one rank's loss is not finite."""

import os
import socket
import time

import pytest
import torch
from torch.utils.data import DistributedSampler

from farnet.training import distributed
from farnet.training.engine import RunSettings, TrainOptions, train
from farnet.core.errors import TrainingDiverged
from farnet.training.losses import ExponentialWeightedCenterLoss
from helpers import TinyNet

WORLD_SIZE = 2
OPTS = TrainOptions(epochs=2, sigma_px=2.0, lr=1e-2, batch_size=1, seed=7, checkpoint_every=1)


def Tiny(k=2):  # noqa: N802
    """Two heads and no batch norm (its statistics would be per process under DDP)."""
    return TinyNet(k, batch_norm=False)


class Data(torch.utils.data.Dataset):
    def __init__(self, n=6, hw=(16, 16), k=2, nan=False):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randint(0, 256, (n, 1, *hw), generator=g, dtype=torch.uint8)
        self.points = torch.rand(n, k, 2, generator=g) * (hw[1] - 1)
        if nan:
            self.points[:] = float("nan")

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.points[i], i


def make(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One rank, as torchrun would start it: env vars, then the engine."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo", FARNET_DEVICE="cpu")
    torch.set_num_threads(1)
    got_rank, world_size, device = distributed.init_from_env(timeout_s=30)  # a hang fails after 30 s
    assert (got_rank, world_size, device) == (rank, WORLD_SIZE, torch.device("cpu"))
    try:
        run_dir = os.path.join(out_dir, "run")
        loss = ExponentialWeightedCenterLoss(40)
        one_epoch = OPTS.__class__(**{**OPTS.__dict__, "epochs": 1})
        train(make(), Data(), loss, one_epoch, run_dir, RunSettings(fingerprint="f", progress=False, rank=rank,
                                                                    world_size=world_size, device=device))
        # a new process would start from other weights: everything must come from rank 0's checkpoint
        model = make(seed=100 + rank)
        result = train(model, Data(), loss, OPTS, run_dir, RunSettings(fingerprint="f", progress=False, rank=rank,
                                                                       world_size=world_size, device=device))
        torch.save({"model": model.state_dict(), "history": result.history, "resumed_from": result.resumed_from},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # a non-finite loss on rank 1 only must stop both ranks at the same step, not hang rank 0
        try:
            train(make(), Data(nan=rank == 1), loss, OPTS, os.path.join(out_dir, "nan"),
                  RunSettings(fingerprint="n", progress=False, rank=rank, world_size=world_size, device=device))
        except TrainingDiverged as exc:
            with open(os.path.join(out_dir, f"diverged{rank}.txt"), "w") as f:
                f.write(str(exc))
    finally:
        distributed.cleanup()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run :func:`_worker` on two spawned processes; their outputs are in the returned folder."""
    out = tmp_path_factory.mktemp("ddp")
    context = torch.multiprocessing.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD_SIZE,
                                                    join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("the two ranks did not finish within 120 s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return out


def _single_process_reference(tmp_path):
    model = make()
    options = OPTS.__class__(**{**OPTS.__dict__, "batch_size": WORLD_SIZE})
    result = train(model, Data(), ExponentialWeightedCenterLoss(40), options, tmp_path,
                   RunSettings(fingerprint="r", progress=False))
    return model, result


def test_two_ranks_see_the_batches_of_one_process_with_their_combined_batch():
    data = Data()
    one = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=OPTS.seed)
    ranks = [DistributedSampler(data, num_replicas=WORLD_SIZE, rank=r, shuffle=True, seed=OPTS.seed)
             for r in range(WORLD_SIZE)]
    for epoch in range(OPTS.epochs):
        for sampler in (one, *ranks):
            sampler.set_epoch(epoch)
        order = list(one)
        single_batches = [sorted(order[i:i + WORLD_SIZE]) for i in range(0, len(order), WORLD_SIZE)]
        assert [sorted(pair) for pair in zip(*(list(s) for s in ranks))] == single_batches


def test_ddp_matches_one_process_and_resumes_on_every_rank(two_ranks, tmp_path):
    reference, ref_result = _single_process_reference(tmp_path)
    states = [torch.load(two_ranks / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert [s["resumed_from"] for s in states] == [1, 1]
    for name, expected in reference.state_dict().items():
        for rank, state in enumerate(states):
            torch.testing.assert_close(state["model"][name], expected, rtol=0, atol=1e-6, msg=f"rank {rank}: {name}")
    # the logged loss is the mean over the ranks, i.e. the loss of the combined batch
    for got, expected in zip(states[0]["history"], ref_result.history):
        assert got["epoch"] == expected["epoch"]
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    saved = torch.load(two_ranks / "run" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 2
    torch.testing.assert_close(saved["model"]["fine.weight"], states[0]["model"]["fine.weight"], rtol=0, atol=0)


def test_a_non_finite_loss_on_one_rank_stops_every_rank(two_ranks):
    for rank in range(WORLD_SIZE):
        message = (two_ranks / f"diverged{rank}.txt").read_text()
        assert "loss became nan at epoch 1, step 1" in message


def test_single_process_needs_no_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FARNET_DEVICE", "cpu")
    assert distributed.init_from_env() == (0, 1, torch.device("cpu"))
    model = Tiny()
    assert distributed.wrap(model, "cpu") is model
    assert distributed.mean_across_ranks(torch.tensor(3.0)).item() == 3.0
    assert distributed.broadcast_float(2.5, "cpu") == 2.5
    distributed.barrier()
    distributed.cleanup()
    assert not distributed.is_distributed()


def test_bad_environment_is_reported(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE=2 but RANK is not set"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        distributed.init_from_env()


def test_engine_refuses_world_size_without_a_group(tmp_path):
    with pytest.raises(ValueError, match=r"world_size=2 but no process group"):
        train(make(), Data(), ExponentialWeightedCenterLoss(40), OPTS, tmp_path,
              RunSettings(fingerprint="x", progress=False, rank=0, world_size=2))
