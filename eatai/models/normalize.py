"""Normalisation as the model's first layer, so that inputs and eps live in [0,1] pixel space."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ['Normalized', 'CIFAR10_MEAN', 'CIFAR10_STD', 'IMAGENET_MEAN', 'IMAGENET_STD']

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalized(nn.Module):
    """`model((x - mean) / std)` for x in [0,1]; mean and std are buffers, saved with the weights."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # on the CPU even under torch.device('meta'), so that the checks below can read the values
        mean = torch.as_tensor(mean, dtype=torch.float32, device='cpu')
        std = torch.as_tensor(std, dtype=torch.float32, device='cpu')
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(f"mean and std must be 1-d of equal length (one value per channel), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool(torch.all(std > 0)):
            raise ValueError(f"std must be > 0, got {std.tolist()}")
        self.model = model
        self.register_buffer('mean', mean.reshape(1, -1, 1, 1))
        self.register_buffer('std', std.reshape(1, -1, 1, 1))

    def forward(self, x):  # (B, C, H, W) in [0,1]
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
