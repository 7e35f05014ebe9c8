"""Hostile and mistaken input: one test each, a clear error or warning, nothing lost."""
import math

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from test_training import N_ITER, tiny_dls, tiny_learner
from torch import nn

from eatai.all import Normalized, arrays_dls, robust_learner
from eatai.attacks import apgd
from eatai.callbacks import AttackSettings
from eatai.models.cifar_cnn import CifarCNN
from eatai.threats import ThreatModel


def test_normalised_images_are_refused():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(32, 3, 32, 32, generator=g) - 0.5) / 0.25
    with pytest.raises(ValueError, match='Normalize'):
        arrays_dls(x[:16], torch.zeros(16, dtype=torch.long), x[16:], torch.zeros(16, dtype=torch.long))


def test_probabilities_instead_of_logits_warn():
    with pytest.warns(UserWarning, match='probabilities'):
        robust_learner(tiny_dls(), nn.Sequential(CifarCNN(width=4), nn.Softmax(dim=1)))


def test_randomness_in_eval_mode_warns():
    class Noisy(nn.Module):
        def forward(self, x):
            return x + 0.1 * torch.randn_like(x)
    with pytest.warns(UserWarning, match='randomised'):
        robust_learner(tiny_dls(), nn.Sequential(Noisy(), CifarCNN(width=4)))


@pytest.mark.parametrize('eps', [0, -0.1, math.nan])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match='eps'):
        ThreatModel('linf', eps)
    with pytest.raises(ValueError, match='eps'):
        AttackSettings.build(eps={'l1': eps})


@pytest.mark.parametrize('eps1', [0.01, 500.0])
def test_nested_balls_warn(eps1):
    learn = tiny_learner()
    with pytest.warns(UserWarning, match='single-norm'):
        learn.eat_finetune(epochs=1, lr=0.01, n_iter=1, eps={'l1': eps1})


def test_dropout_is_off_during_the_attack(batch):
    x, y = batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.Dropout(0.9), nn.Linear(32, 10)).train()
    runs = [apgd(model, x, y, 'linf', 8 / 255)[0] for _ in range(2)]
    assert torch.equal(*runs) and model.training          # deterministic, flags back to train


def test_vanishing_gradients_warn(batch):
    x, y = batch
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    with torch.no_grad():
        flat[1].weight.zero_()                              # the output does not depend on the input
    with pytest.warns(UserWarning, match='zero input gradient'):
        apgd(flat, x, y, 'l2', 0.5, loss='dlr')


def test_nan_loss_stops_training_before_the_update():
    calls = []

    def nan_on_second_batch(pred, y):
        calls.append(1)
        loss = F.cross_entropy(pred, y)
        return loss * float('nan') if len(calls) == 2 else loss

    class Snapshot(Callback):
        def after_step(self):
            self.weights = [p.detach().clone() for p in self.model.parameters()]

    snap = Snapshot()
    learn = tiny_learner(loss_func=nan_on_second_batch)
    with pytest.raises(FloatingPointError, match='loss became nan at epoch 0, batch 1'):
        learn.transfer_finetune('linf', epochs=1, lr=0.01, n_iter=1, cbs=[snap])
    # the NaN batch never reached the optimiser: the weights are those after the first step
    assert all(torch.equal(a, b) for a, b in zip(snap.weights, learn.model.parameters()))


def test_single_example_batches_are_skipped_with_a_warning():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(17, 3, 32, 32, generator=g), torch.randint(0, 10, (17,), generator=g)
    learn = tiny_learner(arrays_dls(x[:17], y[:17], x[:4], y[:4], bs=8))   # batches 8, 8, 1
    with pytest.warns(UserWarning, match='BatchNorm'):
        learn.transfer_finetune('linf', epochs=1, lr=0.01, n_iter=1)


def test_grayscale_non_square_images_train():
    set_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 28, 20, generator=g), torch.randint(0, 10, (40,), generator=g)
    dls = arrays_dls(x[:32], y[:32], x[32:], y[32:], bs=16)
    learn = robust_learner(dls, Normalized(CifarCNN(width=4, in_chans=1), (0.5,), (0.25,)))
    learn.eat_finetune(epochs=1, lr=0.01, n_iter=N_ITER)
    assert len(learn.adversarial_training.history) == 1


def test_labels_out_of_range_are_refused():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    dls = arrays_dls(x[:16], y[:16], x[16:], y[16:], bs=8, vocab=[str(i) for i in range(12)])
    dls.train.dataset.y[0] = 11                             # a label the 10-class model cannot output
    learn = robust_learner(dls, Normalized(CifarCNN(width=4), (0.5,) * 3, (0.25,) * 3))
    with pytest.raises(ValueError, match='out of range'):
        learn.transfer_finetune('linf', epochs=1, lr=0.01, n_iter=1)
