"""WideResNets for 32x32 inputs in RobustBench's two parameter layouts, registered with timm.

RobustBench keeps WideResNets in two layouts, and each has its own name here. A state dict for
one layout does not load into the other.

- `wrn_28_10`, `wrn_34_20`, `wrn_70_16` (ReLU) use the TRADES layout of RobustBench's
  `architectures/wide_resnet.py` (`WideResNet`). Keys: `conv1`;
  `block{1,2,3}.layer.N.{bn1,conv1,bn2,conv2}` and `block{1,2,3}.layer.0.convShortcut`; `bn1`;
  `fc`. RobustBench uses this layout for Carmon2019Unlabeled (WRN-28-10), Rice2020Overfitting
  (WRN-34-20) and Jia2022LAS-AT_70_16, among others. Many of these checkpoints also carry an
  unused copy of block1, `sub_block1.*` (RobustBench's `sub_block1=True`, e.g.
  Carmon2019Unlabeled). Pass `sub_block1=True` so that they load with `strict=True`.
- `wrn_28_10_dm`, `wrn_34_20_dm`, `wrn_70_16_dm` (Swish) use DeepMind's layout, RobustBench's
  `architectures/dm_wide_resnet.py` (`DMWideResNet`). Keys: `mean` and `std` buffers of shape
  (3, 1, 1); `init_conv`; `layer.{0,1,2}.block.M.{batchnorm_0,conv_0,batchnorm_1,conv_1}` and
  `layer.{0,1,2}.block.0.shortcut`; `batchnorm`; `logits`. RobustBench uses this layout for the
  Gowal2020Uncovering_* and Rebuffi2021Fixing_* models, including the WRN-70-16, WRN-34-20 and
  WRN-28-10 of the paper's Table 2. Stride-2 convs pad (0, 1, 0, 1), TensorFlow's 'SAME', not
  (1, 1, 1, 1): the weights were trained that way.

Normalisation stays outside the model, in eatai's `Normalized`. The DM models keep `mean` and `std`
only so that checkpoints load strictly. They are not applied in `forward`. A checkpoint whose
values differ from the ones the model was built with (`mean=`, `std=`, CIFAR-10 by default, also
in `pretrained_cfg`) fails to load, instead of being silently normalised wrongly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from ._activations import make_activation
from ._registry import hub_loadable, model_kwargs
from .normalize import CIFAR10_MEAN, CIFAR10_STD

__all__ = ['WideBasicBlock', 'WideResNet', 'DMBlock', 'DMWideResNet',
           'wrn_28_10', 'wrn_34_20', 'wrn_70_16', 'wrn_28_10_dm', 'wrn_34_20_dm', 'wrn_70_16_dm']


def _blocks_per_group(depth: int) -> int:
    if (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 28, 34, 70), got {depth}")
    return (depth - 4) // 6


def _cifar_cfg(num_classes: int, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> dict:
    return dict(mean=tuple(mean), std=tuple(std), input_size=(3, 32, 32), num_classes=num_classes)


class WideBasicBlock(nn.Module):
    """TRADES/RobustBench wide block: (BN, act, 3x3 conv) twice; `convShortcut` (1x1) on the activated input when widths differ."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str = 'relu'):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = make_activation(activation)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = make_activation(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.convShortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if cin != cout else None

    def forward(self, x):  # (B, cin, H, W) -> (B, cout, H/stride, W/stride)
        out = self.relu1(self.bn1(x))
        skip = x if self.convShortcut is None else self.convShortcut(out)
        return skip + self.conv2(self.relu2(self.bn2(self.conv1(out))))


class _WideGroup(nn.Module):
    """`n` wide blocks; the first one changes width and stride (RobustBench's `NetworkBlock`)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, activation: str):
        super().__init__()
        self.layer = nn.Sequential(*[WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, activation)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k in RobustBench's `WideResNet` layout (conv1, block1-3, bn1, fc)."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, activation: str = 'relu',
                 sub_block1: bool = False):
        super().__init__()
        n, widths = _blocks_per_group(depth), (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _WideGroup(n, widths[0], widths[1], 1, activation)
        if sub_block1:  # never used in forward: it exists so that checkpoints carrying it load strictly
            self.sub_block1 = _WideGroup(n, widths[0], widths[1], 1, activation)
        self.block2 = _WideGroup(n, widths[1], widths[2], 2, activation)
        self.block3 = _WideGroup(n, widths[2], widths[3], 2, activation)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = make_activation(activation)
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_classes, self.activation = num_classes, activation
        self.pretrained_cfg = _cifar_cfg(num_classes)
        for m in self.modules():  # TRADES' initialisation, which RobustBench keeps: He normal over fan-out
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, 3, 32, 32), normalised
        out = self.block3(self.block2(self.block1(self.conv1(x))))  # (B, 64k, 8, 8)
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class DMBlock(nn.Module):
    """DeepMind wide block: like `WideBasicBlock`, with its names and 'SAME' padding for stride 2."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str = 'swish'):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"DMBlock supports stride 1 or 2, got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.relu_0 = make_activation(activation)
        # stride 1: padding=1 is the same as DeepMind's explicit pad; stride 2 pads right/bottom only, in forward
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1 if stride == 1 else 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.relu_1 = make_activation(activation)
        self.conv_1 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if cin != cout else None
        self.stride = stride

    def forward(self, x):  # (B, cin, H, W) -> (B, cout, H/stride, W/stride)
        out = self.relu_0(self.batchnorm_0(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        if self.stride == 2:
            out = F.pad(out, (0, 1, 0, 1))
        return skip + self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(out))))


class _DMGroup(nn.Module):
    """`n` DeepMind blocks; the first one changes width and stride (`_BlockGroup`)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, activation: str):
        super().__init__()
        self.block = nn.Sequential(*[DMBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, activation)
                                     for i in range(n)])

    def forward(self, x):
        return self.block(x)


def _check_mean_std(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Load-state-dict pre-hook: refuse a checkpoint normalised with other mean/std than the model was built for."""
    for name in ('mean', 'std'):
        mine, theirs = getattr(module, name), state_dict.get(prefix + name)
        if theirs is None or mine.is_meta or theirs.is_meta or theirs.shape != mine.shape:
            continue  # missing keys and shape mismatches are reported by torch itself
        if not torch.allclose(theirs.detach().float().cpu(), mine.detach().float().cpu(), atol=1e-4):
            error_msgs.append(
                f"{prefix}{name} is {theirs.flatten().tolist()} in the checkpoint but {mine.flatten().tolist()} in "
                f"the model: eatai normalises outside the model, so create it with {name}=... set to the checkpoint's "
                "values and wrap it in Normalized with model.pretrained_cfg['mean'], ['std']")


class DMWideResNet(nn.Module):
    """WRN-depth-k in DeepMind's layout (init_conv, layer.0-2, batchnorm, logits; unused mean/std buffers)."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, activation: str = 'swish',
                 mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        n, widths = _blocks_per_group(depth), (16, 16 * width, 32 * width, 64 * width)
        # kept for strict loading and as the record of the checkpoint's normalisation; `Normalized` applies it
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(3, 1, 1))
        self.init_conv = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(_DMGroup(n, widths[0], widths[1], 1, activation),
                                   _DMGroup(n, widths[1], widths[2], 2, activation),
                                   _DMGroup(n, widths[2], widths[3], 2, activation))
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.relu = make_activation(activation)
        self.logits = nn.Linear(widths[3], num_classes)
        self.num_classes, self.activation = num_classes, activation
        self.pretrained_cfg = _cifar_cfg(num_classes, mean, std)
        self.register_load_state_dict_pre_hook(_check_mean_std)

    def forward(self, x):  # (B, 3, 32, 32), normalised
        out = self.relu(self.batchnorm(self.layer(self.init_conv(x))))  # (B, 64k, 8, 8)
        return self.logits(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _create(cls, name: str, pretrained: bool, kwargs: dict, allowed: set, **arch) -> nn.Module:
    return cls(**arch, **model_kwargs(name, kwargs, allowed))


_WRN_KWARGS = {'num_classes', 'activation', 'sub_block1'}
_DM_KWARGS = {'num_classes', 'activation', 'mean', 'std'}


@register_model
@hub_loadable
def wrn_28_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10, RobustBench/TRADES layout (e.g. Carmon2019Unlabeled with `sub_block1=True`)."""
    return _create(WideResNet, 'wrn_28_10', pretrained, kwargs, _WRN_KWARGS, depth=28, widen_factor=10)


@register_model
@hub_loadable
def wrn_34_20(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-34-20, RobustBench/TRADES layout (e.g. Rice2020Overfitting)."""
    return _create(WideResNet, 'wrn_34_20', pretrained, kwargs, _WRN_KWARGS, depth=34, widen_factor=20)


@register_model
@hub_loadable
def wrn_70_16(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-70-16, RobustBench/TRADES layout (e.g. Jia2022LAS-AT_70_16); Gowal/Rebuffi models are `wrn_70_16_dm`."""
    return _create(WideResNet, 'wrn_70_16', pretrained, kwargs, _WRN_KWARGS, depth=70, widen_factor=16)


@register_model
@hub_loadable
def wrn_28_10_dm(pretrained: bool = False, **kwargs) -> DMWideResNet:
    """WRN-28-10, DeepMind layout, Swish (Gowal2020Uncovering_28_10_extra, Rebuffi2021Fixing_28_10_cutmix_ddpm)."""
    return _create(DMWideResNet, 'wrn_28_10_dm', pretrained, kwargs, _DM_KWARGS, depth=28, width=10)


@register_model
@hub_loadable
def wrn_34_20_dm(pretrained: bool = False, **kwargs) -> DMWideResNet:
    """WRN-34-20, DeepMind layout, Swish (Gowal2020Uncovering_34_20)."""
    return _create(DMWideResNet, 'wrn_34_20_dm', pretrained, kwargs, _DM_KWARGS, depth=34, width=20)


@register_model
@hub_loadable
def wrn_70_16_dm(pretrained: bool = False, **kwargs) -> DMWideResNet:
    """WRN-70-16, DeepMind layout, Swish (Gowal2020Uncovering_70_16*, Rebuffi2021Fixing_70_16_*)."""
    return _create(DMWideResNet, 'wrn_70_16_dm', pretrained, kwargs, _DM_KWARGS, depth=70, width=16)
