"""PreAct ResNet-18 for 32x32 inputs, in RobustBench's parameter layout, registered with timm.

Two layouts, both from RobustBench's `model_zoo/architectures/resnet.py`; their state dicts load
with `strict=True` (after stripping a `module.` prefix):

- `layout='v2'` (default): `PreActResNet(PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)`. The
  shortcut conv reads the activated block input, and BatchNorm + ReLU come before the pooling
  (`bn.*` keys). The E-AT authors use this network (`fast_models.PreActResNet18(10,
  activation='softplus1')`) for the paper's Table 1 and for its l1 RN-18. RobustBench uses it for
  Rice2020Overfitting (l2) and Kireev2021Effectiveness.
- `layout='v1'`: `PreActResNet18()`, built from `PreActBlock`. The shortcut conv reads the raw
  block input, and there is no BatchNorm before the head. RobustBench uses it for Wong2020Fast and
  Andriushchenko2020Understanding.

Keys: `conv1.weight`; `layer{1-4}.{0,1}.{bn1,conv1,bn2,conv2}.*`; `layer{2-4}.0.shortcut.0.weight`;
`bn.*` (v2 only); `linear.weight`, `linear.bias`.

`activation` ('relu' | 'softplus' | 'swish') applies inside the blocks. In v2, the activation
before the head is always a ReLU, as in the authors' code. `preact_resnet18_softplus` is the
paper's model: exactly `preact_resnet18(activation='softplus')`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from ._activations import make_activation
from ._registry import hub_loadable, model_kwargs
from .normalize import CIFAR10_MEAN, CIFAR10_STD

__all__ = ['PreActBlock', 'PreActResNet', 'preact_resnet18', 'preact_resnet18_softplus']

LAYOUTS = ('v2', 'v1')


class PreActBlock(nn.Module):
    """Pre-activation basic block: (BN, act, 3x3 conv) twice, plus a shortcut that is a 1x1 conv when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, activation: str = 'relu', shortcut_after_act: bool = True):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = make_activation(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        # a Sequential, so that the key is RobustBench's `shortcut.0.weight`
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))
                         if stride != 1 or cin != cout else None)
        self.shortcut_after_act = shortcut_after_act

    def forward(self, x):  # (B, cin, H, W) -> (B, cout, H/stride, W/stride)
        out = self.act1(self.bn1(x))
        if self.shortcut is None:
            skip = x
        else:  # v2 (PreActBlockV2) projects the activated input, v1 (PreActBlock) the raw input
            skip = self.shortcut(out if self.shortcut_after_act else x)
        out = self.conv2(self.act2(self.bn2(self.conv1(out))))
        return out + skip


class PreActResNet(nn.Module):
    """PreAct ResNet for 32x32 inputs: 3x3 stem, four stages of width 64-512, pooling, `linear` head."""

    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, activation: str = 'relu', layout: str = 'v2'):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: use one of {LAYOUTS}")
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = [PreActBlock(cin if j == 0 else width, width, (1 if i == 0 else 2) if j == 0 else 1,
                                  activation, shortcut_after_act=layout == 'v2') for j in range(n)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            cin = width
        self.bn = nn.BatchNorm2d(512) if layout == 'v2' else None
        self.linear = nn.Linear(512, num_classes)
        self.num_classes, self.activation, self.layout = num_classes, activation, layout
        self.pretrained_cfg = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, input_size=(3, 32, 32), num_classes=num_classes)

    def forward(self, x):  # (B, 3, 32, 32), normalised
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))  # (B, 512, 4, 4)
        if self.bn is not None:
            out = F.relu(self.bn(out))  # a ReLU whatever `activation` is, as in fast_models.py
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _create(name: str, pretrained: bool, kwargs: dict, **defaults) -> PreActResNet:
    return PreActResNet(**{**defaults, **model_kwargs(name, kwargs, {'num_classes', 'activation', 'layout'})})


@register_model
@hub_loadable
def preact_resnet18(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreAct ResNet-18 for CIFAR (`activation`='relu'|'softplus'|'swish', `layout`='v2'|'v1')."""
    return _create('preact_resnet18', pretrained, kwargs)


@register_model
@hub_loadable
def preact_resnet18_softplus(pretrained: bool = False, **kwargs) -> PreActResNet:
    """The paper's PreAct ResNet-18 (Table 1): softplus activations, layout 'v2'."""
    return _create('preact_resnet18_softplus', pretrained, kwargs, activation='softplus')
