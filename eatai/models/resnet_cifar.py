"""ResNet-50 for 32x32 inputs (3x3 stem, no max-pool) in RobustBench's layout, registered with timm.

The layout is RobustBench's `architectures/resnet.py`, `ResNet(Bottleneck, [3, 4, 6, 3])`. RobustBench
uses it for Engstrom2019Robustness and Augustin2020Adversarial, the RN-50s of the paper's Table 2.
Keys: `conv1`, `bn1`; `layer{1-4}.N.{conv1,bn1,conv2,bn2,conv3,bn3}` and
`layer{1-4}.0.shortcut.{0,1}` (a 1x1 conv and a BatchNorm); `linear`. These checkpoints were trained
with their own normalisation. Engstrom2019Robustness uses std (0.2023, 0.1994, 0.2010), not
`pretrained_cfg`'s CIFAR-10 std, so wrap them in `Normalized` with their values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from ._registry import hub_loadable, model_kwargs
from .normalize import CIFAR10_MEAN, CIFAR10_STD

__all__ = ['Bottleneck', 'ResNetCifar', 'resnet50_cifar']


class Bottleneck(nn.Module):
    """Post-activation bottleneck: 1x1, 3x3 (strided), 1x1 x4 convs with BatchNorm; a conv+BN shortcut when the shape changes."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = self.expansion * planes
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        # an empty Sequential is the identity and has no keys, as in RobustBench
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):  # (B, cin, H, W) -> (B, 4 planes, H/stride, W/stride)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Bottleneck ResNet for 32x32 inputs: 3x3 stem without max-pool, four stages, pooling, `linear` head."""

    def __init__(self, num_blocks=(3, 4, 6, 3), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, planes, (1 if i == 0 else 2) if j == 0 else 1))
                cin = planes * Bottleneck.expansion
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, num_classes)
        self.num_classes = num_classes
        self.pretrained_cfg = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, input_size=(3, 32, 32), num_classes=num_classes)

    def forward(self, x):  # (B, 3, 32, 32), normalised
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (B, 2048, 4, 4)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model
@hub_loadable
def resnet50_cifar(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """ResNet-50 for CIFAR (RobustBench layout: Engstrom2019Robustness, Augustin2020Adversarial)."""
    return ResNetCifar(**model_kwargs('resnet50_cifar', kwargs, {'num_classes'}))
