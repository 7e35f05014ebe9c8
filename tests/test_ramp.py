"""RAMP (Jiang & Singh 2024) as a strategy: its loss by hand, its batches, its table, its state, bad input."""
import math

import pytest
import torch
from fastai.callback.core import Callback
from conftest import CountingModel
from test_training import tiny_dls, tiny_learner

from eatai.all import RAMP, TRADES, set_adversary
from eatai.attacks import make_ball
from eatai.callbacks import ramp_loss

N_ITER = 1


def hand_ramp(out_q, out_r, y, lam):
    """RAMP's loss written out per example, with plain Python loops."""
    worst, kls, n_c = [], [], 0
    for zq, zr, label in zip(out_q.tolist(), out_r.tolist(), y.tolist()):
        pq = [math.exp(v) / sum(math.exp(u) for u in zq) for v in zq]
        pr = [math.exp(v) / sum(math.exp(u) for u in zr) for v in zr]
        worst.append(max(-math.log(pq[label]), -math.log(pr[label])))
        if max(range(len(zq)), key=lambda j: zq[j]) == label:   # x_q classified correctly
            n_c += 1
            kls.append(sum(a * math.log(a / b) for a, b in zip(pq, pr)))
    l_kl = sum(kls) / n_c if n_c else 0.0
    return sum(worst) / len(worst) + lam * l_kl, l_kl


def test_ramp_loss_matches_a_hand_computation():
    out_q = torch.tensor([[2.0, 0.1, -1.0], [0.3, 1.5, 0.0], [0.0, 0.2, 2.5], [1.0, 1.2, 0.9]])
    out_r = torch.tensor([[0.5, 0.4, 0.2], [2.0, 0.1, 0.3], [0.1, 0.0, 0.3], [0.2, 2.2, 0.1]])
    y = torch.tensor([0, 1, 0, 2])        # x_q correct for examples 0 and 1 only
    loss, winner, l_kl = ramp_loss(out_q, out_r, y, lam=0.7)
    expected, expected_kl = hand_ramp(out_q, out_r, y, 0.7)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert l_kl.item() == pytest.approx(expected_kl, rel=1e-5) and expected_kl > 0
    ce_q = torch.nn.functional.cross_entropy(out_q, y, reduction='none')
    ce_r = torch.nn.functional.cross_entropy(out_r, y, reduction='none')
    assert torch.equal(winner, (ce_r > ce_q).long())


def test_ramp_kl_term_is_zero_when_no_linf_point_is_correct():
    out_q = torch.tensor([[0.0, 3.0], [2.0, 0.0]])
    out_r = torch.tensor([[1.0, -1.0], [0.0, 0.5]])
    y = torch.tensor([0, 1])              # both x_q misclassified
    loss, _, l_kl = ramp_loss(out_q, out_r, y, lam=100.0)
    assert l_kl.item() == 0.0
    assert loss.item() == pytest.approx(hand_ramp(out_q, out_r, y, 100.0)[0], rel=1e-6)


class Capture(Callback):
    """Keeps each adversarial training batch and the loss the callback put in place."""
    order, run_valid = 20, False

    def __init__(self):
        self.clean, self.batches = [], []

    def before_batch(self):
        self.batches.append((self.xb[0].detach(), self.yb[0].detach()))

    def after_loss(self):
        self.batches[-1] += (self.pred.detach(), self.loss.detach())


class Clean(Callback):
    order, run_valid = 0, False

    def __init__(self):
        self.x = []

    def before_batch(self):
        self.x.append(self.xb[0].detach().clone())


def test_ramp_trains_on_both_norms_and_fills_the_table():
    learn = tiny_learner(tiny_dls(n_train=32, bs=16))
    clean, cap = Clean(), Capture()
    learn.fit_adversarial(1, lr=0.01, scheme='ramp', n_iter=N_ITER, cbs=[clean, cap])
    cb = learn.adversarial_training
    assert cb.strategy.lam_value == RAMP.LAM_SCRATCH
    for x, (xb, yb, pred, loss) in zip(clean.x, cap.batches):
        b = len(x)
        assert len(xb) == 2 * b and torch.equal(yb[:b], yb[b:])
        assert make_ball('linf', cb.settings.eps['linf']).contains(x, xb[:b]).all()
        assert make_ball('l1', cb.settings.eps['l1']).contains(x, xb[b:]).all()
        assert loss.item() == pytest.approx(ramp_loss(pred[:b], pred[b:], yb[:b], 5.0)[0].item(), rel=1e-5)
    names = list(learn.recorder.metric_names)
    row = dict(zip(names[1:], learn.recorder.values[0]))
    for col in ('rerr_linf', 'rerr_l1', 'rerr_union', 'max_linf', 'max_l1', 'kl'):
        assert col in names
    assert row['max_linf'] + row['max_l1'] == pytest.approx(1)
    assert 0 <= row['rerr_linf'] <= row['rerr_union'] <= 1
    kls = [ramp_loss(p[:len(x)], p[len(x):], y[:len(x)], 5.0)[2].item() for x, (_, y, p, _) in zip(clean.x, cap.batches)]
    assert row['kl'] == pytest.approx(sum(kls) / len(kls), rel=1e-4, abs=1e-9)


def test_ramp_lambda_defaults_to_the_papers_per_recipe():
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    learn.finetune_adversarial('ramp', epochs=1, lr=0.01, n_iter=N_ITER)
    assert learn.adversarial_training.strategy.lam_value == RAMP.LAM_FINETUNE == 0.5
    assert set_adversary(learn, 'ramp').strategy.lam_value == RAMP.LAM_SCRATCH == 5.0
    assert set_adversary(learn, RAMP(lam=2.0), finetune=True).strategy.lam_value == 2.0


def test_ramp_state_survives_save_and_load(tmp_path):
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    set_adversary(learn, RAMP(lam=1.5, pair=('l1', 'l2')), finetune=True)
    strategy = learn.adversarial_training.strategy
    strategy._wins, strategy._seen = torch.tensor([3, 1]), 4
    path = learn.save(tmp_path / 'ramp.pth')
    other = tiny_learner(tiny_dls(n_train=16, bs=16))
    other.load(path)
    s = other.adversarial_training.strategy
    assert isinstance(s, RAMP) and s.lam == 1.5 and s.pair == ('l1', 'l2') and s.lam_value == 1.5
    assert s.stats()['max_l1'] == pytest.approx(0.75)


@pytest.mark.parametrize('kwargs, match', [
    (dict(lam=-1), 'lam'), (dict(lam=float('nan')), 'lam'), (dict(lam=True), 'lam'),
    (dict(pair=('linf', 'l3')), 'unknown norm'), (dict(pair=('l1', 'L1')), 'different'), (dict(pair=('linf',)), 'two norms'),
])
def test_ramp_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RAMP(**kwargs)


class Count(Callback):
    def __init__(self):
        self.n = 0

    def before_batch(self):
        self.n += 1


@pytest.mark.parametrize('scheme', ['ramp', 'msd', 'l2>ramp@1'])
def test_schemes_with_their_own_loss_refuse_trades_before_training(scheme):
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    before = [p.detach().clone() for p in learn.model.parameters()]
    count = Count()
    with pytest.raises(ValueError, match='cannot take the training loss'):
        learn.fit_adversarial(1, lr=0.01, scheme=scheme, loss=TRADES(), cbs=count)
    assert count.n == 0 and all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


def test_eat_pair_attacks_the_drawn_norm_fully_and_its_partner_cheaply():
    from eatai.all import AttackSettings, EATPair
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    model = CountingModel(learn.model)
    settings = AttackSettings.build(n_iter=5)
    strategy = EATPair(partner_iter=2, seed=0)
    x, y = (t.as_subclass(torch.Tensor) for t in learn.dls.one_batch())   # plain tensors, as in training
    drawn = set()
    for _ in range(6):
        model.n_forward = 0
        before = {n: m.count for n, m in strategy.rerr.items()}
        batch = strategy.perturb(settings, model, x, y)
        norm, b = batch.norm, len(x)
        drawn.add(norm)
        partner = 'l1' if norm == 'linf' else 'linf'
        assert model.n_forward == (5 + 1) + (2 + 1)                     # APGD runs n_iter + 1 forwards
        assert len(batch.x) == 2 * b and torch.equal(batch.y, torch.cat([y, y]))
        assert make_ball('linf', settings.eps['linf']).contains(x, batch.x[:b]).all()   # l-inf points first
        assert make_ball('l1', settings.eps['l1']).contains(x, batch.x[b:]).all()
        assert set(batch.robust) == {norm}                       # E-AT's statistics: the full attack only
        assert strategy.rerr[norm].count == before[norm] + b and strategy.rerr[partner].count == before[partner]
        pred = learn.model(batch.x)
        assert batch.loss_fn(pred).item() == pytest.approx(ramp_loss(pred[:b], pred[b:], y, 5.0)[0].item(), rel=1e-6)
    assert drawn == {'linf', 'l1'}


def test_eat_pair_trains_with_eats_columns_and_the_kl(tmp_path):
    from eatai.all import EATPair
    learn = tiny_learner(tiny_dls(n_train=32, bs=16))
    learn.finetune_adversarial('eat-pair', epochs=1, lr=0.01, n_iter=N_ITER)
    strategy = learn.adversarial_training.strategy
    assert isinstance(strategy, EATPair) and strategy.lam_value == RAMP.LAM_FINETUNE
    names = list(learn.recorder.metric_names)
    row = dict(zip(names[1:], learn.recorder.values[0]))
    assert row['freq_linf'] + row['freq_l1'] == pytest.approx(1)
    assert row['prob_linf'] + row['prob_l1'] == pytest.approx(1) and row['kl'] >= 0
    path = learn.save(tmp_path / 'pair.pth')
    other = tiny_learner(tiny_dls(n_train=16, bs=16))
    other.load(path)
    s = other.adversarial_training.strategy
    assert isinstance(s, EATPair) and s.partner_iter == 1 and s.lam_value == RAMP.LAM_FINETUNE
    assert s.probabilities() == strategy.probabilities()
    assert torch.equal(s.generator.get_state(), strategy.generator.get_state())


@pytest.mark.parametrize('kwargs, match', [(dict(lam=-1), 'lam'), (dict(partner_iter=0), 'partner_iter'),
                                           (dict(partner_iter=1.5), 'partner_iter')])
def test_eat_pair_bad_input(kwargs, match):
    from eatai.all import EATPair
    with pytest.raises(ValueError, match=match):
        EATPair(**kwargs)
