"""Networks: shapes, torchvision-format weights, clear errors on a foreign checkpoint."""

import pytest
import torch

from trainer.config import ConfigError, TrainConfig
from trainer.models import build_model, load_backbone
from trainer.models.backbones import resnet50


def test_small_network_shapes():
    model = build_model(TrainConfig.from_dict({"pretrained": "none"}), num_classes=11)
    logits, features = model(torch.rand(2, 3, 48, 48))
    assert logits.shape == (2, 11, 12, 12) and features.shape == (2, model.backbone.out_channels, 12, 12)
    z = model.predict(model.project(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])))
    assert z.shape == (2 * 144, 64)


def test_official_aspp_uses_two_branches():
    cfg = TrainConfig.from_dict({"pretrained": "none"})
    assert build_model(cfg, 11).head.used == 4
    assert build_model(cfg.replace(official_aspp=True), 11).head.used == 2


# (first block, second block) dilations of layer3 and layer4 of DeepLabv2-R101 at output stride 8.
TORCHVISION_DILATIONS = {"layer3": (1, 2), "layer4": (2, 4)}
OFFICIAL_DILATIONS = {"layer3": (2, 2), "layer4": (4, 4)}  # model/deeplabv2.py: every block of a layer alike


@pytest.mark.parametrize("official, expected", [(False, TORCHVISION_DILATIONS), (True, OFFICIAL_DILATIONS)])
def test_official_dilation_dilates_every_block_and_keeps_output_stride_8(official, expected):
    cfg = TrainConfig.from_dict({"network": "deeplabv2_r101", "pretrained": "none", "official_dilation": official})
    model = build_model(cfg, num_classes=3).eval()
    for layer, (first, second) in expected.items():
        blocks = getattr(model.backbone, layer)
        assert blocks[0].conv2.dilation == (first, first) and blocks[0].conv2.padding == (first, first)
        assert blocks[1].conv2.dilation == (second, second)
        assert all(block.conv2.stride == (1, 1) for block in blocks)
    side = 64
    with torch.no_grad():
        logits, features = model(torch.rand(1, 3, side, side))
    assert logits.shape[2:] == features.shape[2:] == (side // 8, side // 8)


def test_resnet_keys_are_torchvisions():
    keys = set(resnet50().state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
                "layer3.5.conv3.weight", "layer4.2.bn3.bias"):
        assert key in keys
    assert len(keys) == 318  # torchvision's resnet50 has 320: these and fc.weight, fc.bias


def test_backbone_loads_a_torchvision_state_dict_and_names_mismatches(tmp_path):
    source = resnet50()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(state, tmp_path / "imagenet.pth")
    target = resnet50()
    load_backbone(target, tmp_path / "imagenet.pth")
    torch.testing.assert_close(target.layer2[0].conv2.weight, state["layer2.0.conv2.weight"])

    del state["layer4.2.bn3.bias"]
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConfigError) as err:
        load_backbone(resnet50(), tmp_path / "bad.pth")
    assert "layer4.2.bn3.bias" in str(err.value) and "conv1.weight" in str(err.value)
    with pytest.raises(ConfigError, match="no such file"):
        load_backbone(resnet50(), tmp_path / "missing.pth")
