import pytest
import torch
from fastai.callback.core import Callback
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


class Flicker(nn.Module):
    """A linear model whose bias, on its second forward only, strongly favours the class after
    the label: the attack's first iterate is misclassified with a very high loss, every other
    point is classified correctly. Flags and kept points can then be checked by construction."""

    def __init__(self, y):
        super().__init__()
        self.fc, self.y, self.calls = nn.Linear(3 * 16 * 16, 10), y, 0
        with torch.no_grad():
            self.fc.weight.mul_(1e-3)
            self.fc.bias.zero_()

    def forward(self, x):
        self.calls += 1
        bias = torch.zeros(len(x), 10)
        bias[torch.arange(len(x)), self.y] = 5.0
        if self.calls == 2:
            bias[torch.arange(len(x)), (self.y + 1) % 10] = 50.0
        return self.fc(x.flatten(1)) + bias


class InputRecorder(nn.Module):
    """The model, keeping a copy of every batch it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


class TrainingLosses(Callback):
    """Each training batch's (norm trained on, loss, batch size); the recorder keeps smoothed losses.
    The norm is read from `adversary` (an AdversarialTraining callback), None without one."""
    order = 99

    def __init__(self, adversary=None):
        self.adversary, self.rows = adversary, []

    def after_loss(self):
        if self.training:
            norm = None if self.adversary is None else self.adversary._batch.norm
            self.rows.append((norm, self.learn.loss.item(), len(self.yb[0])))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)


@pytest.fixture(scope='module')
def one_thread():
    """Tiny tensors: a second intra-op thread only adds waiting, badly so on a busy machine.
    Modules opt in with `pytestmark = pytest.mark.usefixtures('one_thread')`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def softmax_regression(seed=0, n=48, size=8, n_flipped=6):
    """A random linear 10-class model and inputs it mostly classifies 'correctly' (the first
    `n_flipped` labels are wrong)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 10))
    x = torch.rand(n, 3, size, size)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[:n_flipped] = (y[:n_flipped] + 1) % 10
    return model, x, y
