"""The paper's baselines as strategies of the one callback: MAX, AVG, MSD, SAT and switching."""
import math

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from test_training import N_ITER, Spy, tiny_dls, tiny_learner

from eatai.attacks import make_ball
from eatai.callbacks import AVG, MAX, MSD, SAT, AttackSettings, Switch, make_strategy
from eatai.callbacks.strategies import EAT, SingleNorm


@pytest.mark.parametrize('scheme', ['max', 'avg', 'msd', 'sat', 'eat', 'l2', 'l2>eat@1'])
def test_every_scheme_trains_a_tiny_learner(scheme):
    learn = tiny_learner()
    learn.fit_adversarial(1, lr=0.01, scheme=scheme, n_iter=N_ITER)
    cb = learn.adversarial_training
    assert cb.strategy.name == scheme
    names = list(learn.recorder.metric_names)
    for col in cb.stat_names:
        assert col in names
    row = dict(zip(names[1:], learn.recorder.values[0]))
    shares = [row[c] for c in cb.stat_names if c.startswith(('rerr_', 'freq_', 'max_', 'step_'))]
    assert all(math.isnan(v) or 0 <= v <= 1 for v in shares)   # nan: a norm no batch of this epoch drew
    for prefix in ('freq_', 'max_', 'step_'):
        group = [row[c] for c in cb.stat_names if c.startswith(prefix)]
        assert not group or sum(group) == pytest.approx(1)


def test_finetune_adversarial_takes_any_scheme():
    learn = tiny_learner()
    learn.finetune_adversarial('msd', epochs=1, lr=0.01, n_iter=N_ITER)
    assert learn.adversarial_training.strategy.name == 'msd'


class Capture(Callback):
    """Keeps each training batch after the attack, with the loss fastai computed on it."""
    order, run_valid = 20, False

    def __init__(self):
        self.batches = []

    def after_loss(self):
        self.batches.append((self.xb[0].detach(), self.yb[0].detach(), self.pred.detach(), self.loss.detach(),
                             self.learn.adversarial_training._batch))


def test_max_trains_on_the_per_example_highest_loss_point(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    settings = AttackSettings.build(n_iter=3)
    out = MAX().perturb(settings, tiny_net, x, y)
    # PGD without random start is deterministic: rerun each attack and compare the losses
    runs = {n: settings.run(tiny_net, x, y, n, 'pgd') for n in ('linf', 'l2', 'l1')}
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(tiny_net(xa), y, reduction='none') for xa, _ in runs.values()])
        chosen = F.cross_entropy(tiny_net(out.x), y, reduction='none')
    assert torch.allclose(chosen, losses.max(0).values)
    assert torch.equal(out.robust['union'], torch.stack([c for _, c in runs.values()]).all(0))
    stats = MAX().stats()
    assert set(stats) == {'max_linf', 'max_l2', 'max_l1'}


def test_max_win_shares_sum_to_one(tiny_net, batch):
    s = MAX()
    s.set_epoch(0)
    s.perturb(AttackSettings.build(n_iter=2), tiny_net, *batch)
    assert sum(s.stats().values()) == pytest.approx(1)


def test_avg_loss_is_the_mean_of_the_three_adversarial_losses():
    learn = tiny_learner()
    clean, cap = Spy(0), Capture()
    learn.fit_adversarial(1, lr=0.01, scheme='avg', n_iter=N_ITER, cbs=[clean, cap])
    settings = learn.adversarial_training.settings
    assert len(cap.batches) == len(clean.train) == 3
    for x_clean, (x, y, pred, loss, batch) in zip(clean.train, cap.batches):
        b = len(x_clean)
        assert len(y) == 3 * b and torch.equal(y[:b], y[b:2 * b]) and torch.equal(y[:b], y[2 * b:])
        per_norm = [F.cross_entropy(pred[i * b:(i + 1) * b], y[i * b:(i + 1) * b]) for i in range(3)]
        assert loss.item() == pytest.approx(torch.stack(per_norm).mean().item(), rel=1e-5)
        for i, norm in enumerate(('linf', 'l2', 'l1')):
            # each third is an adversarial version of the clean batch, in its own ball
            third = x[i * b:(i + 1) * b]
            assert make_ball(norm, settings.eps[norm]).contains(x_clean, third).all()
            assert not torch.equal(third, x_clean)


def test_msd_reports_the_steps_it_took():
    learn = tiny_learner()
    learn.fit_adversarial(1, lr=0.01, scheme='msd', n_iter=N_ITER)
    h = learn.adversarial_training.history[0]
    assert sum(h[f'step_{n}'] for n in ('linf', 'l2', 'l1')) == pytest.approx(1)
    assert 0 <= h['rerr_union'] <= 1


def test_sat_draws_are_uniform():
    s = SAT()
    draws = [s.choose() for _ in range(6000)]
    for norm in ('linf', 'l2', 'l1'):
        assert draws.count(norm) / 6000 == pytest.approx(1 / 3, abs=0.025)
    assert s.attack_method == 'pgd' and EAT().attack_method == 'apgd'


def test_switch_happens_at_the_given_epoch():
    learn = tiny_learner(tiny_dls(n_train=32, bs=16))
    spy = Spy(20)
    learn.fit_adversarial(3, lr=0.01, scheme='l2>eat@2', n_iter=1, cbs=[spy])
    assert spy.norms[:4] == ['l2'] * 4
    assert set(spy.norms[4:]) <= {'linf', 'l1'} and len(spy.norms) == 6
    assert [h['active'] for h in learn.adversarial_training.history] == ['l2', 'l2', 'eat']


def test_switch_state_round_trips():
    s = make_strategy('l2>eat@45')
    assert isinstance(s, Switch) and s.norms == ('linf', 'l2', 'l1')
    s.set_epoch(50)
    s.second.rerr['linf'].update(0.3), s.second.rerr['l1'].update(0.6)
    t = make_strategy(s.name)
    t.load_state_dict(s.state_dict())
    assert t.active is t.second and t.second.probabilities() == s.second.probabilities()


def test_scheme_names():
    assert isinstance(make_strategy('max'), MAX) and isinstance(make_strategy('avg'), AVG)
    assert isinstance(make_strategy('msd'), MSD) and isinstance(make_strategy('Linf'), SingleNorm)
    for bad in ('l2>eat', 'l2>eat@x', 'l2>nope@3', 'maxx'):
        with pytest.raises(ValueError):
            make_strategy(bad)


def test_method_option_switches_baselines_to_apgd(tiny_net, batch):
    x, y = batch
    apgd_settings = AttackSettings.build(n_iter=2, method='apgd')
    pgd_settings = AttackSettings.build(n_iter=2)
    a = SingleNorm('linf')
    a.attack_method = 'pgd'
    out_apgd = a.perturb(apgd_settings, tiny_net, x, y).x
    out_pgd = a.perturb(pgd_settings, tiny_net, x, y).x
    assert not torch.equal(out_apgd, out_pgd)
    with pytest.raises(ValueError, match='method'):
        AttackSettings.build(method='fgsm')


def test_plot_training_stats():
    import matplotlib
    matplotlib.use('Agg')
    from eatai.callbacks.plots import plot_training_stats
    learn = tiny_learner()
    learn.fit_adversarial(2, lr=0.01, scheme='max', n_iter=1)
    ax = plot_training_stats(learn)
    assert ax.get_title().startswith('MAX') and len(ax.get_lines()) == 3
    assert list(ax.get_lines()[0].get_xdata()) == [0, 1]
    with pytest.raises(ValueError, match='step_'):
        plot_training_stats(learn, 'step_')
