"""The inference chain, written once: uint8 images -> normalised input -> network -> the heatmaps to decode.

Evaluation (:func:`farnet.evaluation.loop.predict_landmarks`), ``farnet export`` and ``farnet bench`` all run a network
through :class:`HeatmapNetwork`; training normalises its batches with the same :func:`normalize`. The network's
outputs are :class:`Heatmaps`, one per supervised head; FARNet and the baselines return them, and this module
imports no network, so the baselines can depend on it without a cycle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from farnet.core.fastpath import FastPath, autocast, device_constant, path_from_environment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Heatmaps(NamedTuple):
    """Supervised outputs of a landmark network; ``None`` where a variant has no such head."""

    fine: torch.Tensor | None  # (B, K, H, W)
    coarse: torch.Tensor | None  # (B, K, H/2, W/2)


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) uint8 -> (B, 3, H, W) float: /255, grey to 3 channels, ImageNet mean/std (docs/design.md §2.2)."""
    x = images_u8.float().div_(255.0)
    mean = device_constant(IMAGENET_MEAN, x.device, x.dtype).view(1, 3, 1, 1)
    std = device_constant(IMAGENET_STD, x.device, x.dtype).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def final_heatmaps(out: Heatmaps, size_hw: tuple[int, int]) -> torch.Tensor:
    """The heatmaps to decode, at the input resolution: FR's, else MSFA's up-sampled (MSFA-only variant)."""
    if out.fine is not None:
        return out.fine
    # deviation: the paper does not say how the MSFA-only row of Table 2 is decoded; its half-resolution
    # heatmaps are up-sampled bilinearly to the input size and decoded like FR's.
    return F.interpolate(out.coarse, size=size_hw, mode="bilinear", align_corners=False)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; after it, every module gets back the mode it had (a training
    loop's monitor predicts with the live model, which must come back as it was)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def check_on_device(model: nn.Module, device: str | torch.device) -> None:
    """Raise ValueError unless every parameter of ``model`` is on ``device``: an inference helper runs the
    caller's model as it is and never moves it (moving would change the caller's model, and under a live
    optimiser its state would no longer match the parameters)."""
    device = torch.device(device)
    wrong = {str(p.device) for p in model.parameters() if p.device.type != device.type
             or (device.index is not None and p.device.index != device.index)}
    if wrong:
        raise ValueError(f"the model's parameters are on {', '.join(sorted(wrong))}, not {device}: move it first")


class HeatmapNetwork(nn.Module):
    """A landmark network with its input normalisation: uint8 (B, 1, H, W) -> fp32 heatmaps (B, K, H, W).

    Args:
        model: returns :class:`Heatmaps`.
        precision: "fp32" or "bf16" (autocast; the heads' last convs stay fp32, :mod:`farnet.models.layers`).
        channels_last: the input's memory format.
        cache_enabled: autocast's weight-cast cache (off for CUDA-graph capture).
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", channels_last: bool = False,
                 cache_enabled: bool = True):
        super().__init__()
        self.model = model
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.cache_enabled = cache_enabled
        self._compiled = None  # compile_frozen's

    def compile_frozen(self) -> HeatmapNetwork:
        """Compile the inference (:meth:`heads`) with torch.compile's inductor and freezing, in place: the weights
        become constants, batch norm is folded into the convolutions and the weights are pre-packed for the
        CPU's kernels. For inference only (eval mode, no gradients); each new input shape compiles again, which
        takes minutes on a small CPU, so callers keep the batch shape fixed (:func:`farnet.evaluation.loop.
        predict_landmarks` pads the last batch). Landmarks match the eager path's within rounding (tested)."""
        self._compiled = torch.compile(self._heads, options={"freezing": True}, dynamic=False)
        return self

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) uint8 (``image``: the ONNX input's name) -> (B, K, H, W) fp32."""
        heads = self.heads(image)
        return final_heatmaps(heads, tuple(image.shape[-2:]))

    def heads(self, image: torch.Tensor) -> Heatmaps:
        """(B, 1, H, W) uint8 -> every supervised head's heatmaps, fp32 (``None`` where the network has none)."""
        return (self._compiled or self._heads)(image)

    def _heads(self, image: torch.Tensor) -> Heatmaps:
        x = normalize(image).contiguous(memory_format=self.memory_format)
        with autocast(x.device, self.precision, cache_enabled=self.cache_enabled):
            heads = self.model(x)
        return Heatmaps(*(None if h is None else h.float() for h in heads))


# how a network predicts: eager, or compiled with freezing (HeatmapNetwork.compile_frozen)
INFERENCE_PATHS = ("eager", "compile")


def default_inference_path() -> str:
    """The path the evaluation predicts on: ``FARNET_INFERENCE_PATH`` if set, else ``eager``.

    ``compile`` (:meth:`HeatmapNetwork.compile_frozen`) is faster per image, but compiling takes a minute or more
    on a small CPU, so it pays only over many images (docs/speed.md). Like ``FARNET_STEP_PATH`` it is not a
    parameter: both paths predict the same landmarks up to rounding, so switching it re-runs no stage; each
    evaluation records the path it took.

    Raises:
        ConfigError: naming the variable, for a value that is not an inference path.
    """
    return path_from_environment("FARNET_INFERENCE_PATH", INFERENCE_PATHS)


def inference_network(model: nn.Module, device: str | torch.device, fast: FastPath,
                      path: str = "eager") -> HeatmapNetwork:
    """A model handed over for inference, ready to predict: moved to ``device`` in ``fast``'s memory format, in
    eval mode, with ``fast``'s precision; on ``path="compile"`` compiled with freezing. The model is changed in
    place: use it for a loaded model, never for one being trained (:func:`farnet.evaluation.loop.predict_landmarks`
    runs a live model as it is).

    Raises:
        ValueError: a path not in :data:`INFERENCE_PATHS`.
    """
    if path not in INFERENCE_PATHS:
        raise ValueError(f"inference path {path!r} is not one of {', '.join(INFERENCE_PATHS)}")
    model.to(device=device, memory_format=fast.memory_format).eval()
    network = HeatmapNetwork(model, fast.precision, fast.channels_last)
    return network.compile_frozen() if path == "compile" else network


def describe_inference(network: HeatmapNetwork) -> dict:
    """How a network predicts, for a run's record: its precision, memory format and path."""
    return {"precision": network.precision, "channels_last": network.memory_format == torch.channels_last,
            "path": "compile" if network.compiled else "eager"}
