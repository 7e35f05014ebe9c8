"""Gradient projection (RAMP's GP) on real fastai Learners: its update against a direct
computation, BatchNorm statistics, beta = 0, resumption after an interruption or kill -9,
save/load, and bad beta."""
import math
import re

import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import ParamScheduler
from fastai.torch_core import set_seed
from conftest import TrainingLosses
from test_resume import Crash
from torch import nn

from eatai.all import GradientProjection, arrays_dls, piecewise_schedule, robust_learner
from eatai.callbacks import Checkpointing
from eatai.callbacks.gradient_projection import project_update

LR = 0.05


def two_layer(dropout=0.0):
    """Two linear layers with BatchNorm (and dropout, to use randomness) between them. No bias before
    BatchNorm: its gradient is zero up to rounding, and the cosine of two rounding noises has a sign
    that changes with the number of threads."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(16, 10))


def learner(dropout=0.0, n_train=64, bs=16):
    set_seed(0)   # before the DataLoaders: they draw their shuffling seed when created
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n_train + 16, 3, 16, 16, generator=g), torch.randint(0, 10, (n_train + 16,), generator=g)
    # no augmentation: the clean reference run must see the very batches the GP run saw
    dls = arrays_dls(x[:n_train], y[:n_train], x[n_train:], y[n_train:], bs=bs, augment=False)
    set_seed(0)
    return robust_learner(dls, two_layer(dropout), check_data=False)


def params(learn):
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def adversarial(scheme='linf', cbs=(), epochs=1, dropout=0.0, bs=16):
    learn = learner(dropout, bs=bs)
    with learn.no_bar(), learn.no_logging():
        learn.fit_adversarial(epochs, LR, scheme=scheme, n_iter=1, cbs=list(cbs))
    return learn


def natural(bs=16, cbs=()):
    """The natural epoch as plain fastai training: clean batches, CE, the same schedule."""
    learn = learner(bs=bs)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, LR, cbs=[ParamScheduler({'lr': piecewise_schedule(LR)}), *cbs])
    return learn


# --- the update ---------------------------------------------------------------------------------

def test_project_update_drops_a_natural_update_that_disagrees():
    f_r = torch.tensor([1.0, 2.0])
    f_a = f_r + torch.tensor([1.0, 0.0])
    against = f_r + torch.tensor([-1.0, 1.0])     # cos = -1/sqrt(2): GP = 0
    new, cos = project_update(f_r, f_a, against, beta=0.5)
    assert cos == pytest.approx(-1 / math.sqrt(2))
    assert torch.allclose(new, f_r + 0.5 * torch.tensor([1.0, 0.0]))
    along = f_r + torch.tensor([2.0, 2.0])        # cos = 1/sqrt(2): GP = cos * g_n
    new, cos = project_update(f_r, f_a, along, beta=0.5)
    assert cos == pytest.approx(1 / math.sqrt(2))
    assert torch.allclose(new, f_r + 0.5 * cos * torch.tensor([2.0, 2.0]) + 0.5 * torch.tensor([1.0, 0.0]))
    new, cos = project_update(f_r, f_a, f_r, beta=0.5)   # no natural update: cos 0, half the adversarial one
    assert cos == 0 and torch.allclose(new, f_r + 0.5 * torch.tensor([1.0, 0.0]))


class Snapshot(Callback):
    """The weights f_r at the start of the first training epoch."""
    order = 0

    def before_train(self):
        if self.epoch == 0:
            self.f_r = params(self.learn)


def test_gp_epoch_matches_a_direct_computation_from_two_separate_runs():
    """f_a from a run without GP, f_n from plain clean training, both from f_r; GP's weights are
    the per-layer formula on them and its BatchNorm statistics are the adversarial model's.
    8 batches: the schedule's lr / 10 falls on the last one, which the natural pass must follow.
    beta = 0.25: swapping beta and 1 - beta shows."""
    beta, snap, gp = 0.25, Snapshot(), GradientProjection(0.25)
    gp_run, plain = adversarial(cbs=[snap, gp], bs=8), adversarial(bs=8)
    raw = TrainingLosses()
    with_gp, f_r, f_a, f_n = params(gp_run), snap.f_r, params(plain), params(natural(bs=8, cbs=[raw]))
    cosines = {}
    for name, value in with_gp.items():
        if name.endswith(('weight', 'bias')):     # parameters: the formula, written out here
            g_a, g_n = f_a[name] - f_r[name], f_n[name] - f_r[name]
            cos = float((g_a * g_n).sum() / (g_a.norm() * g_n.norm()))
            expected = f_r[name] + beta * (cos * g_n if cos > 0 else 0) + (1 - beta) * g_a
            assert torch.allclose(value, expected, atol=1e-6), name
            cosines[name] = cos
        else:                                     # BatchNorm buffers: those of the adversarial model
            assert torch.equal(value, f_a[name]), name
            assert not torch.equal(value, f_n[name]) or name.endswith('num_batches_tracked'), name
    # the callback's record agrees with the direct computation (project_update's test covers cos <= 0)
    assert min(cosines.values()) > 0.5
    assert gp.history[0]['cos_mean'] == pytest.approx(sum(cosines.values()) / len(cosines), abs=1e-5)
    assert gp.history[0]['kept'] == sum(c > 0 for c in cosines.values()) / len(cosines)
    # the natural loss is the natural run's, averaged over its examples
    assert gp.history[0]['epoch'] == 0
    assert gp.history[0]['nat_loss'] == pytest.approx(sum(l * n for _, l, n in raw.rows) / sum(n for *_, n in raw.rows),
                                                      rel=1e-5)
    # the recorder saw the adversarial epoch only: the training losses are those of the run without GP
    assert gp_run.recorder.losses == plain.recorder.losses and len(plain.recorder.losses) == 8
    assert gp_run.recorder.values[0][0] == plain.recorder.values[0][0]


@pytest.mark.parametrize('scheme, epochs', [('linf', 1), ('eat', 2), ('max', 1)])
def test_beta_zero_is_exactly_the_adversarial_run(scheme, epochs):
    """With dropout in the model: the natural pass draws from its own random stream, so the
    adversarial run (attacks, dropout masks, E-AT draws) is the one it would be without GP."""
    gp = GradientProjection(0.0)
    with_gp = adversarial(scheme, [gp], epochs=epochs, dropout=0.3)
    without = adversarial(scheme, epochs=epochs, dropout=0.3)
    a, b = params(with_gp), params(without)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert with_gp.adversarial_training.history == without.adversarial_training.history
    assert with_gp.recorder.losses == without.recorder.losses        # the natural pass is not recorded
    assert [len(r) for r in with_gp.recorder.values] == [len(r) for r in without.recorder.values]
    assert len(gp.history) == epochs and all(math.isfinite(h['nat_loss']) for h in gp.history)


# --- resumption, save/load ----------------------------------------------------------------------

def finetune(cbs, beta=0.5):
    learn, gp = learner(dropout=0.3), GradientProjection(beta)
    with learn.no_bar(), learn.no_logging():
        learn.finetune_adversarial('eat', epochs=2, lr=LR, n_iter=1, cbs=[gp, *cbs])
    return params(learn), learn.recorder.values, gp.history


@pytest.mark.parametrize('epoch, batch', [(0, 1), (1, 2)])
def test_resume_after_interruption_gives_the_same_run(epoch, batch, tmp_path):
    reference = finetune([])
    ckpt = tmp_path / 'run.pth'
    with pytest.raises(KeyboardInterrupt):
        finetune([Checkpointing(ckpt, every=1), Crash(epoch, batch)])
    resumed = finetune([Checkpointing(ckpt, every=1, resume=True)])
    assert all(torch.equal(resumed[0][k], reference[0][k]) for k in reference[0])
    assert resumed[1:] == reference[1:]


def test_resume_refuses_a_fit_without_gp_or_with_another_beta(tmp_path):
    ckpt = tmp_path / 'run.pth'
    with pytest.raises(KeyboardInterrupt):
        finetune([Checkpointing(ckpt, every=1), Crash(0, 1)])
    learn = learner()
    with pytest.raises(ValueError, match=f"{re.escape(str(ckpt))} was saved with the callbacks \\['gradient_projection'\\], "
                                         "this fit has \\[\\]: resume with the same call$"):
        learn.finetune_adversarial('eat', epochs=2, lr=LR, n_iter=1, cbs=[Checkpointing(ckpt, resume=True)])
    with pytest.raises(ValueError, match='beta'):
        finetune([Checkpointing(ckpt, every=1, resume=True)], beta=0.25)


def test_save_load_round_trip_continues_the_same_run(tmp_path):
    """GP keeps nothing between epochs: the saved weights, optimiser and adversary state are
    the whole run, and a loaded learner continues with GP exactly as the original does."""
    first = adversarial('eat', [GradientProjection()], dropout=0.3)
    first.save(tmp_path / 'gp.pth')
    second = learner(dropout=0.3)
    second.load(tmp_path / 'gp.pth')
    second.dls.train.rng.setstate(first.dls.train.rng.getstate())   # the next epoch's shuffle, as a resumed run has
    assert all(torch.equal(a, b) for a, b in zip(params(first).values(), params(second).values()))
    out = []
    for learn in (first, second):
        set_seed(1)
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, LR, cbs=[GradientProjection()])   # the saved adversary goes on training
        out.append(params(learn))
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])
    assert not torch.equal(out[0]['1.weight'], params(second.load(tmp_path / 'gp.pth'))['1.weight'])


# --- bad input -------------------------------------------------------------------

@pytest.mark.parametrize('beta', [1.5, -0.1, float('nan'), '0.5', None, True])
def test_bad_beta_fails_before_training(beta):
    with pytest.raises(ValueError, match=r'beta must be a number in \[0, 1\]'):
        GradientProjection(beta)


def test_natural_copy_starts_each_epoch_from_a_copy_of_the_optimiser_state():
    seen = []

    class Look(Callback):
        order = GradientProjection.order + 1   # right after GP's before_train

        def before_train(self):
            if self.epoch == 0:   # no momentum yet
                return
            gp, opt = self.learn.gradient_projection, self.learn.opt
            natural = gp._round['opt']
            for (p, *_), (q, *_) in zip(opt.all_params(), natural.all_params()):
                s, t = opt.state[p], natural.state[q]
                seen.append('grad_avg' in s and torch.equal(s['grad_avg'], t['grad_avg'])
                            and s['grad_avg'].data_ptr() != t['grad_avg'].data_ptr() and p is not q)
    adversarial(cbs=[GradientProjection(), Look()], epochs=2)
    assert len(seen) == 5 and all(seen)   # 5 parameter tensors at epoch 1


def test_frozen_parameters_are_left_alone_and_the_rest_combined():
    """A frozen first layer: GP combines the layers after it (cosines over the trainable ones)."""
    snap, gp, plain_snap = Snapshot(), GradientProjection(0.25), Snapshot()
    runs = []
    for cbs in ([snap, gp], [plain_snap]):
        learn = learner(bs=8)
        learn.model[1].weight.requires_grad_(False)
        with learn.no_bar(), learn.no_logging():
            learn.fit_adversarial(1, LR, scheme='linf', n_iter=1, cbs=cbs)
        runs.append(params(learn))
    with_gp, without = runs
    assert torch.equal(with_gp['1.weight'], snap.f_r['1.weight'])
    assert not torch.equal(with_gp['5.weight'], without['5.weight'])   # combined, not the adversarial weights
    assert not math.isnan(gp.history[0]['cos_mean'])
