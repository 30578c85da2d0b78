"""The one model factory: the network a ``model`` section names, built from the registry's tables.

Evaluation, prediction, export, the benchmark and the training engine all build through :func:`build_model`;
the baselines of Table 2 (``baselines/``) are imported here and import nothing back.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from baselines.fpn import FeaturePyramidNetwork
from baselines.unet import UNet
from farnet.models.backbone import Backbone
from farnet.models.farnet import FARNet
from farnet.models.registry import ARCHITECTURE_NAMES, ARCHITECTURES


def _farnet(params, num_landmarks: int) -> nn.Module:
    return FARNet(Backbone(params.backbone, params.pretrained), num_landmarks, fusion=params.fusion,
                  refinement=params.refinement, fr_input_kernel=params.fr_input_kernel, head=params.head)


def _fpn(params, num_landmarks: int) -> nn.Module:
    return FeaturePyramidNetwork(Backbone(params.backbone, params.pretrained), num_landmarks)


def _unet(params, num_landmarks: int) -> nn.Module:
    return UNet(num_landmarks)  # trained from scratch: backbone and pretrained do not apply


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"farnet": _farnet, "fpn": _fpn, "unet": _unet}
assert set(_BUILDERS) == set(ARCHITECTURES), "every registered architecture has a builder"


def build_model(params, num_landmarks: int) -> nn.Module:
    """Build the network a :class:`~farnet.config.ModelParams` section names by ``architecture``: "farnet" (with
    its ``fusion`` / ``refinement`` variants), "fpn" (on ``backbone``) or "unet".

    Raises:
        ValueError: naming an architecture the registry does not have.
    """
    builder = _BUILDERS.get(params.architecture)
    if builder is None:
        raise ValueError(f"architecture {params.architecture!r} is not one of {', '.join(ARCHITECTURE_NAMES)}")
    return builder(params, num_landmarks)
