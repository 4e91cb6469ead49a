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
