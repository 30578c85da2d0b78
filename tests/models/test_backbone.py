import pytest
import torch

from farnet.models.backbone import Backbone
from farnet.models.registry import BACKBONE_NAMES as BACKBONES

EXPECTED = {  # channels per level, finest first; VGG's first level is full resolution (C0)
    "vgg16": ([64, 128, 256, 512, 512], [1, 2, 4, 8, 16]),
    "vgg19": ([64, 128, 256, 512, 512], [1, 2, 4, 8, 16]),
    "resnet101": ([64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    "resnet152": ([64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    "densenet121": ([64, 256, 512, 1024, 1024], [2, 4, 8, 16, 32]),
    "densenet169": ([64, 256, 512, 1280, 1664], [2, 4, 8, 16, 32]),
}


def test_every_table1_backbone_is_registered():
    assert set(BACKBONES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_levels_channels_and_strides(name):
    backbone = Backbone(name).eval()
    channels, strides = EXPECTED[name]
    assert backbone.channels == channels
    assert backbone.strides == strides
    assert backbone.has_full_resolution == (strides[0] == 1)
    with torch.no_grad():
        feats = backbone(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 96 // s) for c, s in zip(channels, strides)]


def test_unknown_backbone_and_missing_weights_file(tmp_path):
    with pytest.raises(ValueError, match="backbone 'resnet50' is not one of"):
        Backbone("resnet50")
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        Backbone("densenet121", pretrained=str(tmp_path / "weights.pth"))


def test_local_weights_file_is_loaded(tmp_path):
    import timm

    reference = timm.create_model("resnet101", pretrained=False)
    torch.nn.init.constant_(reference.conv1.weight, 0.125)
    path = tmp_path / "resnet101.pth"
    torch.save(reference.state_dict(), path)
    backbone = Backbone("resnet101", pretrained=str(path))
    assert torch.all(backbone.body.conv1.weight == 0.125)
