"""What the model factory can build, as two tables (after timm's ``_registry``): the backbones with their
feature levels, and the architectures. Pure data, no torch: the config validates ``model.backbone``,
``model.architecture`` and every input size against these tables, and :mod:`farnet.models.factory` builds from
them.

A backbone's levels are timm ``features_only`` indices, finest first, with the stride of each. ResNet and
DenseNet give C1..C5 at strides 2..32 (C1 is the stem convolution's output, paper §3.1). VGG (paper §4.3) has
five blocks at strides 1..16: its first block is full resolution and serves as C0. timm's sixth VGG level (the
pooled output at stride 32) is not used by the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Training-mode batch norm at the network's coarsest level normalises over batch x (H / stride) x (W / stride)
# values per channel. With 2 values (batch 1, a 2x1 map) the variance is mostly rounding, the backward divides by
# sqrt(var + eps) ~ sqrt(eps) at every such layer, and DenseNet's block 4 chains 33 of them: the gradient norm of
# the first step was 3e6 in fp32 and 1e10 in bf16 (against ~1 at 4 or more values), which overflows to inf and
# NaN on CPUs whose bf16 kernels round differently (docs/design.md, "Numerics"). So each image must give the
# coarsest level at least this many values.
MIN_COARSEST_VALUES = 4


@dataclass(frozen=True)
class BackboneSpec:
    """One ImageNet backbone: its timm feature levels and where the authors' network taps differ from timm's.

    Attributes:
        name: the timm model name, also the value of ``model.backbone``.
        strides: stride of each level returned, finest first (checked when the backbone is built).
        out_indices: the timm ``features_only`` indices of those levels.
        tap_modules: level -> the module whose output the authors' network takes in place of timm's.
        no_act: norm layers whose activation the authors' network does not apply (timm fuses BN and ReLU).
    """

    name: str
    strides: tuple[int, ...]
    out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)
    tap_modules: dict[int, str] = field(default_factory=dict)
    no_act: tuple[str, ...] = ()

    @property
    def has_full_resolution(self) -> bool:
        """Whether the first level is at stride 1 (VGG): it serves as C0."""
        return self.strides[0] == 1


_RESNET_DENSENET_STRIDES = (2, 4, 8, 16, 32)
# The authors' DenseNet taps: C1 is the raw output of the first conv (before its BN and ReLU), C5 the final BN
# without its ReLU; C2..C4 (the dense blocks' outputs, before the transitions) are timm's already.
# deviation: VGG and ResNet keep timm's taps (after each stage's ReLU); the authors' plan is DenseNet's.
_DENSENET_TAPS = {"tap_modules": {0: "features.conv0"}, "no_act": ("features.norm5",)}

BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    BackboneSpec("vgg16", strides=(1, 2, 4, 8, 16)),
    BackboneSpec("vgg19", strides=(1, 2, 4, 8, 16)),
    BackboneSpec("resnet101", strides=_RESNET_DENSENET_STRIDES),
    BackboneSpec("resnet152", strides=_RESNET_DENSENET_STRIDES),
    BackboneSpec("densenet121", strides=_RESNET_DENSENET_STRIDES, **_DENSENET_TAPS),
    BackboneSpec("densenet169", strides=_RESNET_DENSENET_STRIDES, **_DENSENET_TAPS),
)}
BACKBONE_NAMES = tuple(BACKBONES)


@dataclass(frozen=True)
class ArchitectureSpec:
    """One network the factory builds (``model.architecture``).

    Attributes:
        name: the value of ``model.architecture``.
        uses_backbone: built on ``model.backbone`` (its coarsest stride is the input multiple); else
            ``own_stride`` is.
        own_stride: the coarsest stride of a network without a backbone (the U-Net's 2**depth).
        table: where the paper reports it.
    """

    name: str
    uses_backbone: bool
    own_stride: int | None = None
    table: str = ""


ARCHITECTURES: dict[str, ArchitectureSpec] = {spec.name: spec for spec in (
    ArchitectureSpec("farnet", uses_backbone=True, table="Tables 1-5 (with fusion/refinement: Table 2's variants)"),
    ArchitectureSpec("fpn", uses_backbone=True, table="Table 2's FPN baseline"),
    ArchitectureSpec("unet", uses_backbone=False, own_stride=16, table="Table 2's U-Net baseline (depth 4)"),
)}
ARCHITECTURE_NAMES = tuple(ARCHITECTURES)

# What every dataset size must be a multiple of, so that any registered network can train on its cache.
COMMON_MULTIPLE = max([max(spec.strides) for spec in BACKBONES.values()]
                      + [a.own_stride for a in ARCHITECTURES.values() if a.own_stride])


def input_multiple(architecture: str, backbone: str) -> int:
    """What the input height and width of ``architecture`` on ``backbone`` must be multiples of: the stride of
    its coarsest level (32 for ResNet and DenseNet, 16 for VGG and the U-Net).

    Raises:
        KeyError: an architecture or backbone the tables do not have (the config names them first).
    """
    spec = ARCHITECTURES[architecture]
    return max(BACKBONES[backbone].strides) if spec.uses_backbone else int(spec.own_stride)


def input_size_problem(input_hw: tuple[int, int], architecture: str, backbone: str) -> str | None:
    """Why ``input_hw`` cannot train ``architecture`` on ``backbone``, or None: both sizes positive multiples of
    its coarsest stride, and at least :data:`MIN_COARSEST_VALUES` values per image at that level."""
    multiple = input_multiple(architecture, backbone)
    if not all(v > 0 and v % multiple == 0 for v in input_hw):
        return f"both sizes must be positive multiples of {multiple} (the coarsest stride of {architecture}" + (
            f" on {backbone})" if ARCHITECTURES[architecture].uses_backbone else ")")
    h, w = (v // multiple for v in input_hw)
    if h * w < MIN_COARSEST_VALUES:
        return (f"gives a {h}x{w} map at stride {multiple}: batch norm over fewer than {MIN_COARSEST_VALUES} "
                f"values per image makes the gradients explode; use at least {2 * multiple}x{2 * multiple}")
    return None
