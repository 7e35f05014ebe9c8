"""TRADES as the training loss of any scheme: its formula, its KL attack, its batches, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from test_training import tiny_dls, tiny_learner

from eatai.all import TRADES, set_adversary
from eatai.attacks import apgd, make_ball
from eatai.attacks.pgd import pgd
from eatai.callbacks import AttackSettings, EAT, trades_loss

N_ITER = 1


def kl_loss(logits, y, reference):
    """KL(softmax(reference) || softmax(logits)) per example, by torch's own kl_div."""
    return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), reduction='none', log_target=True).sum(1)


def hand_trades(clean, adv, y, beta):
    """CE(f(x), y) + beta * KL(f(x) || f(x')), batchmean, with plain Python loops."""
    ce, kl = 0.0, 0.0
    for zc, za, label in zip(clean.tolist(), adv.tolist(), y.tolist()):
        p = [math.exp(v) / sum(math.exp(u) for u in zc) for v in zc]
        q = [math.exp(v) / sum(math.exp(u) for u in za) for v in za]
        ce += -math.log(p[label])
        kl += sum(a * math.log(a / b) for a, b in zip(p, q))
    return ce / len(y) + beta * kl / len(y)


def test_trades_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 3, 1, 1, 2])
    assert trades_loss(clean, adv, y, 6.0).item() == pytest.approx(hand_trades(clean, adv, y, 6.0), rel=1e-5)
    # several adversarial sets (AVG): the KL is averaged over all of them
    adv2 = torch.randn(5, 4, generator=g)
    both = trades_loss(clean, torch.cat([adv, adv2]), y, 2.0).item()
    ce = hand_trades(clean, clean, y, 0.0)
    kls = [(hand_trades(clean, a, y, 1.0) - ce) for a in (adv, adv2)]
    assert both == pytest.approx(ce + 2.0 * sum(kls) / 2, rel=1e-5)


@pytest.mark.parametrize('norm, eps', [('linf', 8 / 255), ('l2', 0.5), ('l1', 12.0)])
def test_trades_attack_increases_the_kl(tiny_net, batch, norm, eps):
    x, y = batch
    tiny_net.eval()
    with torch.no_grad():
        reference = tiny_net(x)
        start = make_ball(norm, eps).random_start(x, torch.Generator().manual_seed(3))
        kl_start = kl_loss(tiny_net(start), y, reference)
    x_adv, _ = apgd(tiny_net, x, y, norm, eps, n_iter=5, loss='kl', random_start=True, seed=3)
    assert make_ball(norm, eps).contains(x, x_adv).all()
    with torch.no_grad():
        kl_adv = kl_loss(tiny_net(x_adv), y, reference)
    assert (kl_adv >= kl_start - 1e-7).all() and kl_adv.mean() > 1.5 * kl_start.mean()
    x_pgd, _ = pgd(tiny_net, x, y, norm, eps, n_iter=5, loss='kl', random_start=True, keep='loss')
    with torch.no_grad():
        assert kl_loss(tiny_net(x_pgd), y, reference).mean() > kl_start.mean()


def test_kl_attack_without_random_start_is_refused(tiny_net, batch):
    with pytest.raises(ValueError, match='random_start'):
        apgd(tiny_net, *batch, 'linf', 8 / 255, loss='kl')
    with pytest.raises(ValueError, match='random_start'):
        pgd(tiny_net, *batch, 'linf', 8 / 255, loss='kl')


def test_trades_robustness_flags_count_errors_of_the_adversarial_point(tiny_net, batch):
    x, y = batch
    settings = AttackSettings.build(n_iter=3)
    settings.attack_loss = 'kl'
    out = EAT(seed=0).perturb(settings, tiny_net, x, y)
    tiny_net.eval()
    with torch.no_grad():
        wrong = tiny_net(out.x).argmax(1) != y
    assert not (out.robust[out.norm] & wrong).any()   # flagged robust => correct at the point trained on


class Capture(Callback):
    order, run_valid = 20, False

    def __init__(self):
        self.clean, self.batches = [], []

    def before_batch(self):
        self.batches.append((self.xb[0].detach(), self.yb[0].detach(), self.learn.adversarial_training._batch.norm))

    def after_loss(self):
        self.batches[-1] += (self.pred.detach(), self.loss.detach())


class Clean(Callback):
    order, run_valid = 0, False

    def __init__(self):
        self.x, self.y = [], []

    def before_batch(self):
        self.x.append(self.xb[0].detach().clone()), self.y.append(self.yb[0].detach().clone())


def test_eat_finetune_with_trades_trains_on_clean_and_adversarial_points(tmp_path):
    learn = tiny_learner(tiny_dls(n_train=32, bs=16))
    clean, cap = Clean(), Capture()
    learn.eat_finetune(epochs=1, lr=0.01, n_iter=N_ITER, loss=TRADES(beta=2.0), cbs=[clean, cap])
    cb = learn.adversarial_training
    assert cb.settings.attack_loss == 'kl' and isinstance(cb.loss, TRADES)
    for x, y, (xb, yb, norm, pred, loss) in zip(clean.x, clean.y, cap.batches):
        b = len(x)
        assert len(xb) == 2 * b and torch.equal(xb[:b], x) and torch.equal(yb[:b], y)
        assert make_ball(norm, cb.settings.eps[norm]).contains(x, xb[b:]).all() and not torch.equal(xb[b:], x)
        assert loss.item() == pytest.approx(trades_loss(pred[:b], pred[b:], y, 2.0).item(), rel=1e-5)
    path = learn.save(tmp_path / 'trades.pth')
    other = tiny_learner(tiny_dls(n_train=16, bs=16))
    other.load(path)
    assert other.adversarial_training.loss == TRADES(beta=2.0)
    assert other.adversarial_training.settings.attack_loss == 'kl'


@pytest.mark.parametrize('beta', [0, -1.0, float('inf'), float('nan'), True])
def test_trades_bad_beta(beta):
    with pytest.raises(ValueError, match='beta'):
        TRADES(beta=beta)


def test_a_plain_loss_keeps_the_ce_attack():
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    assert set_adversary(learn, 'eat', loss=TRADES()).settings.attack_loss == 'kl'
    cb = set_adversary(learn, 'eat')    # re-arming without a loss goes back to the CE attack
    assert cb.loss is None and cb.settings.attack_loss == 'ce'
