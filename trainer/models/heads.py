"""Segmentation heads (DeepLabv2's ASPP-sum, DeepLabv3+) and the contrastive MLP heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ASPPSum(nn.Module):
    """DeepLabv2: parallel dilated 3x3 convolutions straight to class scores, summed.

    ``official`` reproduces the official code, whose loop returns after adding the second
    branch, so only the first two dilations contribute.
    """

    def __init__(self, cin: int, num_classes: int, dilations: list[int], official: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(cin, num_classes, 3, padding=d, dilation=d) for d in dilations)
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)
        self.used = 2 if official else len(dilations)

    def forward(self, low: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches[:self.used])


class DeepLabV3PlusHead(nn.Module):
    """ASPP (1x1, three atrous 3x3, image pooling) + a decoder on the stride-4 features."""

    def __init__(self, cin: int, low_channels: int, num_classes: int, dilations: list[int], width: int = 256) -> None:
        super().__init__()

        def cbr(i: int, o: int, k: int, d: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, k, padding=d * (k // 2), dilation=d, bias=False),
                                 nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.aspp = nn.ModuleList([cbr(cin, width, 1)] + [cbr(cin, width, 3, d) for d in dilations[:3]])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, width, 1, bias=False), nn.ReLU(inplace=True))
        self.project = cbr(width * (len(self.aspp) + 1), width, 1)
        self.reduce_low = cbr(low_channels, 48, 1)
        self.fuse = nn.Sequential(cbr(width + 48, width, 3), cbr(width, width, 3))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, low: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[2:])
        x = self.project(torch.cat([branch(x) for branch in self.aspp] + [pooled], dim=1))
        x = F.interpolate(x, size=low.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, self.reduce_low(low)], dim=1)))


def mlp_head(cin: int, width: int) -> nn.Sequential:
    """Linear, BN, ReLU, Linear: the paper's projection and prediction heads."""
    return nn.Sequential(nn.Linear(cin, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Linear(width, width))
