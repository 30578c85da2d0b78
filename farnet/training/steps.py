"""One optimisation step, and the paths it can run on: the engine's, ``farnet bench``'s and ``farnet replicate``'s.

A step is: normalise the uint8 batch, forward (bf16 autocast and channels_last where :mod:`farnet.core.fastpath`
says), one Gaussian target per supervised head made on the device in the prediction's layout, the loss summed
over the heads (§3.4), backward, the optimiser. :class:`Stepper` runs it on one of four paths (``STEP_PATHS``):

- ``eager``: :func:`train_step`, reading the loss on the host at every step, so a non-finite loss is caught
  before the weights are touched. The default, and the only path for data-parallel runs.
- ``deferred``: the same operations with no host synchronisation at all: constants live on the device
  (:func:`farnet.core.fastpath.device_constant`), the losses are summed on the device and read every few steps
  (:meth:`Stepper.read`). A non-finite loss is then caught at the next read, after the weights took it; the run
  stops there as on the eager path, with its last good checkpoint.
- ``graph`` (CUDA): the deferred step captured once in a CUDA graph and replayed (the documented whole-network
  capture: warm-up steps on one side stream, gradients set to None before capture, Adam with ``capturable=True``
  and its learning rate a device tensor updated in place, autocast without its weight cache, and a capture that
  other threads' CUDA calls, such as the DataLoader's pin-memory thread, cannot break). A batch of another shape
  (an epoch's last, smaller, batch) runs deferred.
- ``compile``: the deferred step with its forward and loss (and, through AOTAutograd, their backward) compiled
  by ``torch.compile``.

Every path trains the same model with the same data: the steps differ only in rounding (graph and compile) and
in when a bad loss is seen. On CUDA every path but eager uses the fused Adam. What each path costs is measured,
not assumed: ``farnet bench`` and ``farnet replicate`` time them on the device before a long run picks one, and
since every stepper sets the backends as training does (:func:`farnet.core.fastpath.tune_backends`), a step
timed there runs under the same cuDNN settings as the training it stands for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from farnet.training import distributed
from farnet.core.fastpath import FastPath, autocast, memory_format_of, path_from_environment, tune_backends
from farnet.evaluation.heatmaps import encode_heatmaps, scale_points
from farnet.models.interface import Heatmaps, normalize

__all__ = ["STEP_PATHS", "Stepper", "build_optimizer", "default_step_path", "heatmap_loss", "loss_terms",
           "make_stepper", "optimizer_settings", "train_step"]

STEP_PATHS = ("eager", "deferred", "graph", "compile")


def default_step_path() -> str:
    """The path the train stage steps on: ``FARNET_STEP_PATH`` if set, else ``eager``.

    Like ``FARNET_DEVICE`` it is not a parameter: every path trains the same model (up to rounding), so switching
    it re-runs no stage; ``train_info.json`` records the path a run took.

    Raises:
        ConfigError: naming the variable, for a value that is not a step path.
    """
    return path_from_environment("FARNET_STEP_PATH", STEP_PATHS)


def build_optimizer(name: str, parameters, lr: float, *, fused: bool = False,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """Adam (the authors' code) or Adadelta (the paper's text, §4.2), both at ``lr``.

    Args:
        fused: Adam's fused implementation (one kernel per parameter group instead of several per tensor).
        capturable: Adam's state and learning rate on the device, as a CUDA graph needs (``lr`` then becomes
            a device tensor, see :meth:`Stepper.set_lr`).
    """
    if name == "adam":
        extra = {k: True for k, on in (("fused", fused), ("capturable", capturable)) if on}
        return torch.optim.Adam(parameters, lr=lr, **extra)
    if fused or capturable:
        raise ValueError(f"optimizer {name!r}: fused and capturable are for Adam only")
    if name == "adadelta":
        return torch.optim.Adadelta(parameters, lr=lr)
    raise ValueError(f"optimizer {name!r} is not one of 'adam', 'adadelta'")


def loss_terms(out: Heatmaps, points_xy: torch.Tensor, input_hw: tuple[int, int], sigma_px: float,
               loss_fn: nn.Module) -> dict[str, torch.Tensor]:
    """The loss of each supervised head (coarse-to-fine supervision, §3.4), as device tensors.

    Args:
        out: the network's heads; ``fine`` at ``input_hw``, ``coarse`` at half of it.
        points_xy: (B, K, 2) landmarks in input pixels.

    Raises:
        ValueError: the model returned no supervised heatmaps.
    """
    terms = {}
    for name, pred in (("fine", out.fine), ("coarse", out.coarse)):
        if pred is None:
            continue
        hw = tuple(pred.shape[-2:])
        # in the prediction's layout (channels_last on the fast path), so the loss reads both the same way
        target = encode_heatmaps(scale_points(points_xy, input_hw, hw), hw, sigma_px,
                                 memory_format=memory_format_of(pred))  # (B, K, h, w)
        terms[name] = loss_fn(pred, target)
    if not terms:
        raise ValueError("the model returned no supervised heatmaps")
    return terms


def heatmap_loss(out: Heatmaps, points_xy: torch.Tensor, input_hw: tuple[int, int], sigma_px: float,
                 loss_fn: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the loss over the supervised heads (:func:`loss_terms`).

    Returns:
        The total loss and each head's value, read on the host.
    """
    terms = loss_terms(out, points_xy, input_hw, sigma_px, loss_fn)
    return sum(terms.values()), {name: float(value.detach()) for name, value in terms.items()}


def train_step(model: nn.Module, images: torch.Tensor, points: torch.Tensor, optimizer: torch.optim.Optimizer,
               loss_fn: nn.Module, sigma_px: float, fast: FastPath,
               world_size: int = 1) -> tuple[float, dict[str, float]]:
    """One optimisation step on a batch already on the device: the eager path, with a host read of the loss.

    Args:
        images: (B, 1, H, W) uint8, normalised here.
        points: (B, K, 2) landmarks in input pixels.
        fast: the resolved precision and memory format (:func:`farnet.core.fastpath.resolve`).
        world_size: > 1 in a distributed run; the loss returned is then the mean over the ranks.

    Returns:
        The loss and each head's value on this rank. A loss that is not finite (on any rank) is returned before
        the weights are touched, so the caller can stop with the last good weights.
    """
    x = normalize(images).contiguous(memory_format=fast.memory_format)  # (B, 3, H, W)
    with autocast(x.device, fast.precision):
        out = model(x)
    loss, parts = heatmap_loss(out, points, tuple(x.shape[-2:]), sigma_px, loss_fn)
    # all ranks see the same mean, so all take the same branch (a rank that stopped alone would hang the others)
    loss_value = (distributed.mean_across_ranks(loss) if world_size > 1 else loss.detach()).item()
    if not math.isfinite(loss_value):
        return loss_value, parts
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss_value, parts


def optimizer_settings(path: str, name: str, device: torch.device) -> dict[str, bool]:
    """The optimiser options a path wants: on CUDA the fused Adam off the eager path, capturable for a graph."""
    if name != "adam" or device.type != "cuda" or path == "eager":
        return {}
    return {"fused": True, **({"capturable": True} if path == "graph" else {})}


def make_stepper(model: nn.Module, loss_fn: nn.Module, fast: FastPath, device: torch.device, path: str = "eager", *,
                 optimizer: str, lr: float, sigma_px: float, world_size: int = 1,
                 optimizer_state: dict | None = None) -> Stepper:
    """A :class:`Stepper` on ``path`` with its own optimiser: the engine's, ``farnet bench``'s and the side-by-side
    runs' one set-up.

    Args:
        model: in training mode on ``device``, in ``fast``'s memory format (a DDP wrapper on the eager path).
        optimizer: "adam" or "adadelta" (:func:`build_optimizer`), over ``model``'s parameters at ``lr``, with the
            options ``path`` wants (:func:`optimizer_settings`).
        optimizer_state: a resumed run's saved optimiser state, loaded before the stepper sets its path's
            options again.
    """
    built = build_optimizer(optimizer, model.parameters(), lr, **optimizer_settings(path, optimizer, device))
    if optimizer_state is not None:
        built.load_state_dict(optimizer_state)
    return Stepper(model, built, loss_fn, sigma_px, fast, device, path, world_size=world_size)


class Stepper:
    """Training steps on one path (``STEP_PATHS``, module text); the losses are kept until :meth:`read`.

    Args:
        model: in training mode on ``device``, in ``fast``'s memory format (a DDP wrapper on the eager path).
        optimizer: built by :func:`build_optimizer` with :func:`optimizer_settings` for this path (as
            :func:`make_stepper` builds it); after a checkpoint is loaded into it (which brings back the saved
            run's options) the stepper sets them again.
        path: one of ``STEP_PATHS``; ``graph`` needs CUDA, every path but ``eager`` one process.
        warmup_steps: (graph) steps run on a side stream before the capture; they are real steps.

    Making a stepper sets the device's backends as training does (:func:`farnet.core.fastpath.tune_backends`,
    process-wide and idempotent), so a step timed by ``farnet bench`` or ``farnet replicate`` runs as in training.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, sigma_px: float,
                 fast: FastPath, device: torch.device, path: str = "eager", *, world_size: int = 1,
                 warmup_steps: int = 3):
        if path not in STEP_PATHS:
            raise ValueError(f"step path {path!r} is not one of {', '.join(STEP_PATHS)}")
        if path == "graph" and device.type != "cuda":
            raise ValueError(f"the graph step path needs a CUDA device, not {device}")
        if path != "eager" and world_size > 1:
            raise ValueError(f"the {path} step path is for one process; data-parallel runs step eagerly")
        self.model, self.optimizer, self.loss_fn, self.sigma_px = model, optimizer, loss_fn, sigma_px
        self.fast, self.device, self.path, self.world_size = fast, device, path, world_size
        self.warmup_steps = max(1, warmup_steps)
        self.read_every_step = path == "eager"  # its loss is on the host already: a bad one stops the next step
        self._names: list[str] = []
        self.steps = 0  # taken by this stepper
        self._pending = 0  # steps since the last read
        self._sums: dict[str, torch.Tensor | float] = {}
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None
        self._graph_sums: dict[str, torch.Tensor] = {}
        self._side_stream: torch.cuda.Stream | None = None  # (graph) the warm-up steps' stream, made once
        self._terms: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]] = self._forward_terms
        if path == "compile":
            self._terms = torch.compile(self._forward_terms)
        tune_backends(device)
        self._settle_optimizer()

    # -- the optimiser: its options and learning rate as this path needs them ---------------------------------
    def _settle_optimizer(self) -> None:
        """Give every group this path's options and the Adam state the matching placement (a loaded checkpoint
        brings back those it was saved with); on the graph path the learning rate becomes a device tensor."""
        wanted = optimizer_settings(self.path, _optimizer_name(self.optimizer), self.device)
        for group in self.optimizer.param_groups:
            for key in ("fused", "capturable"):
                if key in group:
                    group[key] = wanted.get(key, False)
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, dtype=torch.float32, device=self.device) if "capturable" in wanted else lr
            on_device = bool(wanted)
            for p in group["params"]:
                step = self.optimizer.state.get(p, {}).get("step")
                if isinstance(step, torch.Tensor):
                    self.optimizer.state[p]["step"] = step.to(dtype=torch.float32,
                                                              device=p.device if on_device else "cpu")

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps (in place on the graph path: a replayed graph reads the tensor)."""
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    # -- the step ------------------------------------------------------------------------------------------------
    def step(self, images: torch.Tensor, points: torch.Tensor) -> None:
        """One optimisation step on a batch on the device ((B, 1, H, W) uint8, (B, K, 2) input pixels)."""
        self.steps += 1
        self._pending += 1
        if self.path == "eager":
            value, parts = train_step(self.model, images, points, self.optimizer, self.loss_fn, self.sigma_px,
                                      self.fast, self.world_size)
            self._add({"loss": value, **{f"loss_{k}": v for k, v in parts.items()}})
        elif self.path == "graph":
            self._graph_step(images, points)
        else:
            self._add(self._deferred_step(images, points))

    def read(self) -> tuple[int, dict[str, float]]:
        """The steps since the last read and their loss sums (``loss``, ``loss_fine``, ``loss_coarse``), read on
        the host (one synchronisation); the sums start again from zero."""
        sums = dict(self._sums)
        for name, acc in self._graph_sums.items():
            sums[name] = sums.get(name, 0.0) + acc
        on_device = [name for name, value in sums.items() if isinstance(value, torch.Tensor)]
        host = dict(zip(on_device, torch.stack([sums[name].float() for name in on_device]).tolist())) \
            if on_device else {}
        values = {name: host.get(name, value) for name, value in sums.items()}
        for acc in self._graph_sums.values():
            acc.zero_()
        n, self._pending, self._sums = self._pending, 0, {}
        return n, values

    @property
    def pending(self) -> int:
        """Steps taken since the last read."""
        return self._pending

    def _add(self, values: dict) -> None:
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + value

    def _forward_terms(self, images: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        x = normalize(images).contiguous(memory_format=self.fast.memory_format)
        # no weight cache: a graph must not hold casts made during capture (and it saves nothing when each
        # weight is read once per step)
        with autocast(x.device, self.fast.precision, cache_enabled=False):
            out = self.model(x)
        return loss_terms(out, points, tuple(x.shape[-2:]), self.sigma_px, self.loss_fn)

    def _deferred_step(self, images: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self._terms(images, points)
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        values = {"loss": loss.detach(), **{f"loss_{k}": v.detach() for k, v in terms.items()}}
        self._names = list(values)
        return values

    def _graph_step(self, images: torch.Tensor, points: torch.Tensor) -> None:
        static = self._static
        if static is not None and (static[0].shape != images.shape or static[1].shape != points.shape):
            self._add(self._deferred_step(images, points))  # another shape: the graph holds one
            return
        if self.steps <= self.warmup_steps:  # real steps on a side stream, as the capture needs
            side = self._warmup_stream()
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._add(self._deferred_step(images, points))
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        if self._graph is None:
            self._capture(images, points)
        static_images, static_points = self._static
        static_images.copy_(images, non_blocking=True)
        static_points.copy_(points, non_blocking=True)
        self._graph.replay()

    def _warmup_stream(self) -> torch.cuda.Stream:
        """The side stream of every warm-up step, made at the first: the memory the caching allocator keeps for
        one stream serves only that stream, so a new stream per step would allocate the step's memory anew."""
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        return self._side_stream

    def _capture(self, images: torch.Tensor, points: torch.Tensor) -> None:
        """Record the step once: from then on a replay is the whole step, its losses added into device sums."""
        static_images, static_points = images.clone(), points.clone()
        self._static = (static_images, static_points)
        # made before the capture: a tensor made inside it would be made again (zeroed) at every replay
        sums = {name: torch.zeros((), dtype=torch.float32, device=self.device) for name in self._names}
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated from the graph's own pool
        graph = torch.cuda.CUDAGraph()
        # records the step without running it; "thread_local": a CUDA call from another thread (the DataLoader's
        # pin-memory thread) during the capture is not an error, as it would be with the default "global"
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            values = self._deferred_step(static_images, static_points)
            for name, value in values.items():
                sums[name].add_(value.float())
        self._graph, self._graph_sums = graph, sums


def _optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    return "adam" if isinstance(optimizer, torch.optim.Adam) else type(optimizer).__name__.lower()
