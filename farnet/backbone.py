"""One adapter over timm ``features_only`` for every backbone of the paper's Table 1.

The adapter returns the backbone's feature levels finest first, with their ``channels`` and ``strides``, so
that every other module sizes itself from those lists. ResNet and DenseNet give C1..C5 at strides 2..32 (C1 is
the stem convolution's output, paper §3.1). VGG (paper §4.3) has five blocks at strides 1..16: its first block
is full resolution and serves as C0, so ``strides[0] == 1`` tells the model to use it in place of the feature
refinement module's own input convolution.

Where the authors' network taps other points than timm's ``feature_info`` (DenseNet: C1 is the raw output of
the first conv, before its BN and ReLU; C5 is the final BN without its ReLU), :data:`_AUTHORS_TAPS` names them,
and the same timm ``FeatureListNet`` is built over the full model with those taps.
"""

from __future__ import annotations

from pathlib import Path

import timm
from timm.models import FeatureListNet
import torch
from torch import nn

# Which timm feature levels make up each backbone's hierarchy. VGG: the five blocks before each max-pool
# (strides 1..16); timm's sixth VGG level is the pooled output at stride 32, which the paper does not use.
_OUT_INDICES = {
    "vgg16": (0, 1, 2, 3, 4),
    "vgg19": (0, 1, 2, 3, 4),
    "resnet101": (0, 1, 2, 3, 4),
    "resnet152": (0, 1, 2, 3, 4),
    "densenet121": (0, 1, 2, 3, 4),
    "densenet169": (0, 1, 2, 3, 4),
}
BACKBONES = tuple(_OUT_INDICES)

# The authors' taps where they differ from timm's: level -> module, and the norm layers whose activation their
# network does not apply (timm's BatchNormAct2d fuses BN and ReLU). DenseNet's C2..C4 (the dense blocks' outputs,
# before the transitions) are timm's already.
# deviation: VGG and ResNet keep timm's taps (after each stage's ReLU); the authors' plan is DenseNet's.
_DENSENET_TAPS = {"modules": {0: "features.conv0"}, "no_act": ("features.norm5",)}
_AUTHORS_TAPS = {"densenet121": _DENSENET_TAPS, "densenet169": _DENSENET_TAPS}


class Backbone(nn.Module):
    """An ImageNet classification network cut into its feature levels.

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: ``"imagenet"`` (timm downloads the weights; needs internet), ``"none"`` (random
            initialisation) or the path of a local weights file for that timm model.

    Attributes:
        channels: channels of each returned level, finest first.
        strides: stride of each returned level with respect to the input, finest first.
    """

    def __init__(self, name: str, pretrained: str = "none"):
        super().__init__()
        if name not in _OUT_INDICES:
            raise ValueError(f"backbone {name!r} is not one of {', '.join(BACKBONES)}")
        kwargs: dict = {}
        if pretrained == "imagenet":
            kwargs["pretrained"] = True
        elif pretrained != "none":
            path = Path(pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"pretrained weights file not found: {path}")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        taps = _AUTHORS_TAPS.get(name)
        if taps is None:
            self.body = timm.create_model(name, features_only=True, out_indices=_OUT_INDICES[name], **kwargs)
        else:
            self.body = _tapped(timm.create_model(name, num_classes=0, **kwargs), _OUT_INDICES[name], taps)
        self.name = name
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        first = self.strides[0]
        expected = [first * 2**i for i in range(len(self.strides))]
        if first not in (1, 2) or self.strides != expected:
            raise ValueError(f"backbone {name!r}: feature strides {self.strides} are not 1|2 * 2^i")

    @property
    def has_full_resolution(self) -> bool:
        """Whether the first level is at stride 1 (VGG), i.e. it can serve as C0."""
        return self.strides[0] == 1

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, channels[i], H / strides[i], W / strides[i]) map per level."""
        return self.body(x)


def _tapped(model: nn.Module, out_indices: tuple[int, ...], taps: dict) -> FeatureListNet:
    """timm's feature extractor over ``model`` with the taps of :data:`_AUTHORS_TAPS` in place of timm's."""
    info = [dict(level) for level in model.feature_info]
    for level, module in taps["modules"].items():
        info[level]["module"] = module
    model.feature_info = info
    for module in taps["no_act"]:
        model.get_submodule(module).act = nn.Identity()  # BN only: nothing after this tap reads the ReLU
    # flattened as timm's own DenseNet extractor, so the weights keep timm's features_only names
    return FeatureListNet(model, out_indices, flatten_sequential=True)
