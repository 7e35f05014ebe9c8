import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """A small conv net with BatchNorm and dropout: enough to check mode handling."""

    def __init__(self, in_ch=3, n_classes=10, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(width * 16, n_classes)

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


class CountingModel(nn.Module):
    """Counts forward passes of the wrapped model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.n_forward = model, 0

    def forward(self, x):
        self.n_forward += 1
        return self.model(x)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)
