"""Backbones: a small dilated CNN for CPU runs, and ResNet-50/101 with torchvision's names.

Every backbone returns ``(low, out)``: early features (for the DeepLabv3+ decoder) and
its last features (for the segmentation head and the projection head), and says their
widths in ``low_channels`` and ``out_channels``.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18 style)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin, cout, stride, dilation)
        self.conv2 = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class SmallBackbone(nn.Module):
    """Output stride 4, widths 32/64/96, dilations 2 and 4 in the last stage to widen the view.

    Sized so that a CPU training step on 48x48 digits scenes stays far under a second.
    """

    low_channels = 32
    out_channels = 96

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 32, stride=2)          # /2
        self.layer1 = BasicBlock(32, 32)
        self.layer2 = BasicBlock(32, 64, stride=2)          # /4
        self.layer3 = BasicBlock(64, 96, dilation=2)
        self.layer4 = BasicBlock(96, 96, dilation=4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3), with the same parameter names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """ResNet-50/101 whose state-dict keys are torchvision's (``fc`` left out).

    ``dilate`` turns the strides of layer3 and/or layer4 into dilations: (True, True) gives
    output stride 8 (DeepLabv2), (False, True) output stride 16 (DeepLabv3+).

    ``official_dilation``: the first block of a dilated layer uses that layer's dilation, as in
    the official code's DeepLab ResNets (layer3 all 2, layer4 all 4 at stride 8); torchvision
    keeps the previous layer's dilation in it (layer3 1, 2, 2, ...; layer4 2, 4, 4).
    """

    low_channels = 256
    out_channels = 2048

    def __init__(self, layers: tuple[int, int, int, int], dilate: tuple[bool, bool] = (True, True),
                 official_dilation: bool = False) -> None:
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.official_dilation = official_dilation
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2, dilate=dilate[0])
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=dilate[1])

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        first_dilation = self.dilation if self.official_dilation else previous_dilation
        layers = [Bottleneck(self.inplanes, planes, stride, first_dilation, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def freeze_batch_norm_affine(backbone: nn.Module) -> None:
    """Stop training the scale and shift of every batch norm (their running statistics still
    update), as the official DeepLabv2 does with its ImageNet ResNet."""
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for p in module.parameters():
                p.requires_grad_(False)


def resnet50(dilate: tuple[bool, bool] = (False, True), official_dilation: bool = False) -> ResNet:
    return ResNet((3, 4, 6, 3), dilate, official_dilation)


def resnet101(dilate: tuple[bool, bool] = (True, True), official_dilation: bool = False) -> ResNet:
    return ResNet((3, 4, 23, 3), dilate, official_dilation)
