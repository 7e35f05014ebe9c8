"""A small CIFAR-sized CNN for demos, tests and quick experiments, registered with timm."""
from __future__ import annotations

from timm.models import register_model
from torch import nn

from ._registry import hub_loadable, model_kwargs
from .normalize import CIFAR10_MEAN, CIFAR10_STD

__all__ = ['CifarCNN', 'cifar_cnn']


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class CifarCNN(nn.Module):
    """Five 3x3 conv layers (two with stride 2), global pooling and a linear head: ~0.3M
    parameters at width 32, about 30 MFLOPs per 32x32 image."""

    def __init__(self, num_classes: int = 10, width: int = 32, in_chans: int = 3):
        super().__init__()
        w = width
        self.features = nn.Sequential(_conv_bn(in_chans, w), _conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w),
                                      _conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, num_classes)
        self.num_classes = num_classes
        self.pretrained_cfg = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, input_size=(in_chans, 32, 32),
                                   num_classes=num_classes)

    def forward(self, x):  # (B, C, H, W), normalised
        return self.head(self.features(x))


@register_model
@hub_loadable
def cifar_cnn(pretrained: bool = False, **kwargs) -> CifarCNN:
    """Small CIFAR CNN (eatai's demo model)."""
    return CifarCNN(**model_kwargs('cifar_cnn', kwargs, {'num_classes', 'width', 'in_chans'}))
