"""One adapter over timm ``features_only`` for every backbone of the paper's Table 1.

The adapter returns the backbone's feature levels finest first, with their ``channels`` and ``strides``, so
that every other module sizes itself from those lists. Which levels, at which strides, and where the authors'
network taps other points than timm's ``feature_info`` is the backbone's entry in
:data:`farnet.models.registry.BACKBONES`; the strides timm reports are checked against it when a backbone is built.
"""

from __future__ import annotations

from pathlib import Path

import timm
from timm.models import FeatureListNet
import torch
from torch import nn

from farnet.models.registry import BACKBONE_NAMES, BACKBONES, BackboneSpec


class Backbone(nn.Module):
    """An ImageNet classification network cut into its feature levels.

    Args:
        name: a key of :data:`farnet.models.registry.BACKBONES`.
        pretrained: ``"imagenet"`` (timm downloads the weights; needs internet), ``"none"`` (random
            initialisation) or the path of a local weights file for that timm model.

    Attributes:
        channels: channels of each returned level, finest first.
        strides: stride of each returned level with respect to the input, finest first.
    """

    def __init__(self, name: str, pretrained: str = "none"):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"backbone {name!r} is not one of {', '.join(BACKBONE_NAMES)}")
        spec = BACKBONES[name]
        kwargs: dict = {}
        if pretrained == "imagenet":
            kwargs["pretrained"] = True
        elif pretrained != "none":
            path = Path(pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"pretrained weights file not found: {path}")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        if not spec.tap_modules and not spec.no_act:
            self.body = timm.create_model(name, features_only=True, out_indices=spec.out_indices, **kwargs)
        else:
            self.body = _tapped(timm.create_model(name, num_classes=0, **kwargs), spec)
        self.name = name
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        if tuple(self.strides) != spec.strides:
            raise ValueError(f"backbone {name!r}: timm's feature strides {self.strides} are not the registered "
                             f"{list(spec.strides)}")

    @property
    def has_full_resolution(self) -> bool:
        """Whether the first level is at stride 1 (VGG), i.e. it can serve as C0."""
        return self.strides[0] == 1

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, channels[i], H / strides[i], W / strides[i]) map per level."""
        return self.body(x)


def _tapped(model: nn.Module, spec: BackboneSpec) -> FeatureListNet:
    """timm's feature extractor over ``model`` with the spec's taps in place of timm's."""
    info = [dict(level) for level in model.feature_info]
    for level, module in spec.tap_modules.items():
        info[level]["module"] = module
    model.feature_info = info
    for module in spec.no_act:
        model.get_submodule(module).act = nn.Identity()  # BN only: nothing after this tap reads the ReLU
    # flattened as timm's own DenseNet extractor, so the weights keep timm's features_only names
    return FeatureListNet(model, spec.out_indices, flatten_sequential=True)
