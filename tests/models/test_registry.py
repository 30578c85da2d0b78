"""The model registry (farnet/models/registry.py): every entry builds, publishes what the table says, and is the
one list the config's choices come from."""

from __future__ import annotations

import typing
from dataclasses import replace

import pytest
import torch

from farnet.config import ModelParams, Params
from farnet.models.factory import build_model
from farnet.models.registry import (ARCHITECTURE_NAMES, ARCHITECTURES, BACKBONE_NAMES, BACKBONES, COMMON_MULTIPLE,
                                    MIN_COARSEST_VALUES, input_multiple, input_size_problem)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_each_backbone_builds_with_the_registered_strides(name):
    from farnet.models.backbone import Backbone

    backbone = Backbone(name)
    assert tuple(backbone.strides) == BACKBONES[name].strides
    assert backbone.has_full_resolution == BACKBONES[name].has_full_resolution


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_each_architecture_builds_and_takes_its_smallest_input(architecture):
    model = build_model(replace(Params().model, architecture=architecture, backbone="resnet101"), 3).eval()
    multiple = input_multiple(architecture, "resnet101")
    hw = (2 * multiple, 2 * multiple)  # the smallest size the config accepts for a run: a 2x2 coarsest map
    assert input_size_problem(hw, architecture, "resnet101") is None
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *hw))
    heatmaps = out.fine if out.fine is not None else out.coarse
    assert heatmaps.shape[:2] == (1, 3)


def test_the_configs_choices_are_the_registries():
    hints = typing.get_type_hints(ModelParams)
    assert typing.get_args(hints["backbone"]) == BACKBONE_NAMES
    assert typing.get_args(hints["architecture"]) == ARCHITECTURE_NAMES


def test_every_architecture_has_a_builder():
    from farnet.models import factory

    assert set(factory._BUILDERS) == set(ARCHITECTURES)
    with pytest.raises(ValueError, match="architecture 'transformer' is not one of farnet, fpn, unet"):
        build_model(replace(Params().model, architecture="transformer"), 3)


def test_input_size_rules():
    assert COMMON_MULTIPLE == 32
    assert input_multiple("farnet", "vgg16") == 16 and input_multiple("fpn", "densenet121") == 32
    assert "multiples of 32" in input_size_problem((96, 80), "farnet", "densenet121")
    assert f"fewer than {MIN_COARSEST_VALUES} values" in input_size_problem((64, 32), "farnet", "densenet121")
    assert input_size_problem((128, 32), "farnet", "densenet121") is None  # 4x1: four values
