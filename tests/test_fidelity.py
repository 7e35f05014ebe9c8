"""Fidelity to the authors' recipes: weight decay on every parameter when fine-tuning only, and the
warning when l1 + l-inf training cannot cover the l2 radius (Sec. 4.2)."""
import warnings

import pytest
import torch
from conftest import TinyNet
from fastai.callback.core import Callback, CancelFitException
from test_training import tiny_dls, tiny_learner
from torch import nn

from eatai.all import arrays_dls, robust_learner
from eatai.models.cifar_cnn import CifarCNN


class SideBatchNorm(nn.Module):
    """A CNN plus a BatchNorm whose output is multiplied by 0: its weight and bias get an exactly
    zero gradient, so only weight decay can move them."""

    def __init__(self):
        super().__init__()
        self.body, self.side = CifarCNN(width=4), nn.BatchNorm1d(3)
        nn.init.ones_(self.side.bias)   # weight is 1 already: both are non-zero, so decay shows

    def forward(self, x):
        return self.body(x) + 0.0 * self.side(x.mean(dim=(2, 3))).sum(dim=1, keepdim=True)


def side_learner():
    torch.manual_seed(0)
    return robust_learner(tiny_dls(n_train=16, bs=8), SideBatchNorm())


def test_finetuning_decays_batchnorm_and_biases():
    learn = side_learner()
    learn.finetune_adversarial('linf', epochs=1, lr=0.5, n_iter=1)
    side = learn.model.side
    assert (side.weight < 1).all() and (side.bias < 1).all()   # moved by grad 0 + wd * p alone
    states = learn._bn_bias_state(True)   # and after the fit, fastai's exemption is back
    assert len(states) > 0 and not any(s.get('do_wd', True) for s in states)


def test_training_from_scratch_keeps_fastais_exemption():
    learn = side_learner()
    head_bias = learn.model.body.head.bias.detach().clone()
    learn.fit_adversarial(1, lr=0.5, scheme='linf', n_iter=1)
    side = learn.model.side
    assert torch.equal(side.weight, torch.ones(3)) and torch.equal(side.bias, torch.ones(3))
    assert not torch.equal(learn.model.body.head.bias, head_bias)   # the rest did train


class StopAfterFirstBatch(Callback):
    order = 50

    def after_batch(self):
        raise CancelFitException()


def small_image_learner(size=8):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 3, size, size, generator=g), torch.randint(0, 10, (24,), generator=g)
    torch.manual_seed(0)
    return robust_learner(arrays_dls(x[:16], y[:16], x[16:], y[16:], bs=8, augment=False), TinyNet(), check_data=False)


def hull_warnings(learn, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn.fit_adversarial(1, lr=0.01, n_iter=1, **kwargs)
    return [w for w in caught if 'convex hull' in str(w.message)]


def test_hull_warning_when_l1_and_linf_do_not_cover_l2():
    # d = 3*8*8 = 192, eps_inf = 8/255, eps1 = 2: the hull's l2 radius is 0.25 < the default 0.5
    caught = hull_warnings(small_image_learner(), scheme='eat', eps={'l1': 2.0})
    assert len(caught) == 1 and '0.5' in str(caught[0].message)   # once per fit, not per batch
    caught = hull_warnings(small_image_learner(), scheme='ramp', eps={'l1': 2.0})
    assert len(caught) == 1


@pytest.mark.parametrize('kwargs', [
    dict(scheme='eat', eps={'l1': 2.0, 'l2': 0.2}),      # the hull covers this smaller l2 radius
    dict(scheme='max', eps={'l1': 2.0}),                 # l2 is trained directly
])
def test_no_hull_warning_when_covered_or_l2_trained(kwargs):
    assert hull_warnings(small_image_learner(), cbs=StopAfterFirstBatch(), **kwargs) == []


def test_no_hull_warning_with_cifar_radii():
    # CIFAR-10: 0.5 <= 0.6138, the paper's case
    assert hull_warnings(tiny_learner(tiny_dls(n_train=16, bs=8)), scheme='eat', cbs=StopAfterFirstBatch()) == []
