"""The callbacks' rules where their outcome is known: what each strategy reports and saves, the
settings reaching the attacks, the callback's statistics, warnings and refusals (with their words),
and the small callbacks (DecayAll, GradientProjection's pieces, Checkpointing's checks)."""
import math
import re
from dataclasses import dataclass, field

import pytest
import torch
from conftest import CountingModel, TrainingLosses
from fastai.callback.core import Callback, CancelBatchException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from test_training import tiny_dls, tiny_learner
from torch import nn

from eatai.attacks import apgd
from eatai.attacks.msd import msd
from eatai.callbacks import AdversarialTraining, AttackSettings, Checkpointing, RunningMean
from eatai.callbacks.baselines import MAX, MSD
from eatai.callbacks.decay import DecayAll
from eatai.callbacks.gradient_projection import GradientProjection, project_update
from eatai.callbacks.losses import TRADES, trades_loss
from eatai.callbacks.ramp import RAMP, EATPair, ramp_loss
from eatai.callbacks.registry import make_strategy
from eatai.callbacks.strategies import EAT, SAT, SingleNorm
from eatai.callbacks.switch import Switch

pytestmark = pytest.mark.usefixtures('one_thread')


def settings(n_iter=1, **kwargs):
    return AttackSettings.build(n_iter=n_iter, **kwargs)


# --- AttackSettings ------------------------------------------------------------------------------

def test_settings_read_threat_strings_with_the_datasets_radii():
    assert settings(eps='l1:5').eps['l1'] == 5.0                                   # one string
    imagenet = settings(dataset='imagenet', eps=['linf'])                          # no radius: the dataset's
    assert imagenet.eps['linf'] == pytest.approx(4 / 255)
    with pytest.raises(TypeError, match='bogus'):                                  # APGD options checked now
        settings(bogus=1)


def test_settings_pass_their_options_to_apgd_and_msd(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    s = settings(n_iter=3, random_start=True, seed=4)
    x_adv, correct = s.run(tiny_net, x, y, 'l2')
    ref_adv, ref_correct = apgd(tiny_net, x, y, 'l2', 0.5, 3, random_start=True, seed=4)
    assert torch.equal(x_adv, ref_adv) and torch.equal(correct, ref_correct)
    counting = CountingModel(tiny_net)
    s = settings(n_iter={'linf': 2, 'l2': 3, 'l1': 1})
    x_msd, correct, _ = s.msd(counting, x, y, ('linf', 'l2', 'l1'))
    reference = CountingModel(tiny_net)                            # MSD runs the most steps of its norms: 3
    ref = msd(reference, x, y, {n: s.eps[n] for n in ('linf', 'l2', 'l1')}, 3)
    assert counting.n_forward == reference.n_forward
    assert torch.equal(x_msd, ref[0]) and torch.equal(correct, ref[1])


@pytest.mark.parametrize('method', ['pgd', 'apgd'])
def test_kl_attacks_start_at_a_random_point(tiny_net, batch, method):
    """TRADES' KL has a zero gradient at x: without the random start the attack would not move."""
    x, y = batch
    tiny_net.eval()
    s = settings(n_iter=1, method=method)
    s.attack_loss = 'kl'
    x_adv, _ = s.run(tiny_net, x, y, 'linf')
    assert not torch.equal(x_adv, x)
    assert (x_adv - x).abs().max() <= s.eps['linf'] + 1e-6


def test_msd_refuses_another_attack_loss(tiny_net, batch):
    s = settings()
    s.attack_loss = 'kl'
    with pytest.raises(ValueError, match="^MSD's attack maximises the cross-entropy only, not 'kl'$"):
        s.msd(tiny_net, *batch, ('linf', 'l1'))


# --- the callback: refusals, precision, skipped batches, warnings ---------------------------------

def test_callback_refuses_bad_arguments_with_their_reasons():
    with pytest.raises(ValueError, match="^attack_precision must be 'auto' or 'fp32', got 'fp16'$"):
        AdversarialTraining(attack_precision='fp16')
    with pytest.raises(TypeError, match="^loss must be a TrainingLoss such as TRADES\\(beta=6.0\\) or None, got str$"):
        AdversarialTraining(loss='trades')
    with pytest.raises(ValueError, match="^scheme 'msd' cannot take the training loss TRADES: it has an attack or loss "
                                         "of its own; use it with 'eat', 'linf', 'l2', 'l1', 'max', 'avg', 'sat' or a "
                                         "switch of those$"):
        AdversarialTraining('msd', loss=TRADES())
    assert AdversarialTraining().epoch_stats == {}


def armed(cbs=(), **kwargs):
    """A tiny learner with the callback, its before_fit run (no fit)."""
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    cb = AdversarialTraining(**kwargs)
    learn.add_cbs([cb, *cbs])
    learn.create_opt()
    cb.before_fit()
    return learn, cb


@pytest.mark.parametrize('mode, precision, dtype, scale', [
    (None, 'auto', None, 1.0), (AMPMode.BF16, 'auto', torch.bfloat16, 1.0),
    (AMPMode.FP16, 'auto', torch.float16, 1024.0), (AMPMode.BF16, 'fp32', None, 1.0)])
def test_attack_precision_follows_mixed_precision(mode, precision, dtype, scale):
    _, cb = armed([] if mode is None else [MixedPrecision(amp_mode=mode)], attack_precision=precision)
    assert cb._dtype is dtype and cb.settings.grad_scale == scale


class AutocastSpy(Callback):
    """The model's forwards during the attack: whether CPU autocast was on, and in which dtype."""
    order = 0

    def before_fit(self):
        self.seen = []
        self.hook = self.learn.model.register_forward_pre_hook(
            lambda m, args: self.seen.append((args[0].requires_grad, torch.is_autocast_enabled('cpu'),
                                              torch.get_autocast_dtype('cpu'))))

    def after_fit(self):
        self.hook.remove()


@pytest.mark.parametrize('precision, autocast', [('auto', True), ('fp32', False)])
def test_bf16_attacks_run_under_autocast_unless_fp32_is_asked(precision, autocast):
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    spy = AutocastSpy()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3, cbs=[AdversarialTraining('linf', settings(n_iter=1), attack_precision=precision),
                                MixedPrecision(amp_mode=AMPMode.BF16), spy])
    attack = [s for s in spy.seen if s[0]]                         # the attack's forwards take an input gradient
    assert attack and all(on == autocast for _, on, _ in attack)
    assert not autocast or all(dtype == torch.bfloat16 for _, _, dtype in attack)


def test_unusable_batches_are_skipped_with_a_warning():
    _, cb = armed()
    message = ("^skipped a training batch of 1 example\\(s\\): BatchNorm cannot train on fewer than two; use "
               "drop_last=True or a batch size that divides the data$")
    with pytest.warns(UserWarning, match=message), pytest.raises(CancelBatchException):
        cb._skip_unusable(torch.rand(1, 3, 32, 32))
    with pytest.warns(UserWarning, match='^skipped a training batch of 0'), pytest.raises(CancelBatchException):
        cb._skip_unusable(torch.rand(0, 3, 32, 32))
    cb._skip_unusable(torch.rand(2, 3, 32, 32))                    # two are fine
    cb._has_bn = False
    cb._skip_unusable(torch.rand(1, 3, 32, 32))                    # one is fine without BatchNorm


def test_before_batch_wants_one_input_and_one_target():
    learn, cb = armed()
    learn.xb, learn.yb = (torch.rand(2, 3, 32, 32),), (torch.tensor([0, 1]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match='^adversarial training expects one input and one target per batch, got 1 '
                                         'and 2$'):
        cb.before_batch()


@pytest.mark.parametrize('e1, warning', [
    (8 / 255, 'eps1=0.0313725, eps_inf=0.03137, d=4: the l1 ball lies inside the l-inf ball'),
    (4 * 8 / 255, 'eps1=0.12549, eps_inf=0.03137, d=4: the l-inf ball lies inside the l1 ball'),
])
def test_nested_balls_warn_at_their_edges(e1, warning):
    _, cb = armed(settings=settings(eps={'l1': e1, 'l2': 0.5}))   # no hull warning on top: the balls nest
    with pytest.warns(UserWarning) as caught:
        cb._check_radii(torch.rand(1, 1, 2, 2))                    # d = 4; a batch of one
    (w,) = caught
    assert str(w.message) == (f"{warning}, so training on both reduces to single-norm training (Sec. 3 needs "
                              "eps_inf < eps1 < d*eps_inf)")


def test_hull_warning_words_and_batch_of_one():
    _, cb = armed(settings=settings(eps={'l1': 0.05, 'l2': 0.5}))
    with pytest.warns(UserWarning) as caught:
        cb._check_radii(torch.rand(1, 1, 2, 2))
    (w,) = caught
    assert str(w.message).endswith("is not expected to give l2 robustness there (Sec. 4.2); raise eps1 or train l2 "
                                   "as well")


def test_non_finite_loss_stops_before_the_step():
    learn, cb = armed()
    cb._batch = SingleNorm('linf').perturb(settings(), learn.model.eval(), torch.rand(2, 3, 32, 32),
                                           torch.tensor([0, 1]))
    learn.loss, learn.epoch, learn.iter = torch.tensor(float('nan')), 0, 3
    with pytest.raises(FloatingPointError, match="^the training loss became nan at epoch 0, batch 3: training "
                                                 "stopped before the update, so the weights and the last checkpoint "
                                                 "are the last good ones; lower the learning rate$"):
        cb.after_loss()


def test_metric_columns_are_added_for_the_fit_and_removed_after():
    learn, cb = armed()
    names = [getattr(m, 'name', None) for m in learn.metrics]
    assert names == ['accuracy', 'freq_linf', 'freq_l1', 'rerr_linf', 'rerr_l1', 'loss_linf', 'loss_l1']
    cb.before_fit()                                                # stale columns of a crashed fit are replaced
    assert [getattr(m, 'name', None) for m in learn.metrics] == names
    cb.after_fit()
    assert [m.name for m in learn.metrics] == ['accuracy']
    _, quiet = armed(show_stats=False)
    assert [m.name for m in quiet.learn.metrics] == ['accuracy']


def test_per_norm_losses_and_frequencies_are_the_epochs_means():
    learn = tiny_learner(tiny_dls(n_train=40, bs=16))              # batches of 16, 16 and 8
    adversary = AdversarialTraining(EAT(seed=1), settings())
    spy = TrainingLosses(adversary)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3, cbs=[adversary, spy])
    h = adversary.history[0]
    for norm in ('linf', 'l1'):
        rows = [(loss, n) for nm, loss, n in spy.rows if nm == norm]
        assert h[f'freq_{norm}'] == len(rows) / 3
        expected = sum(loss * n for loss, n in rows) / sum(n for _, n in rows) if rows else math.nan
        assert h[f'loss_{norm}'] == pytest.approx(expected, rel=1e-5, nan_ok=True)
    one = tiny_learner(tiny_dls(n_train=16, bs=16))                # a single batch: its norm has frequency 1
    adversary = AdversarialTraining('l1', settings())
    with one.no_bar(), one.no_logging():
        one.fit(1, 1e-3, cbs=adversary)
    assert adversary.history[0]['freq_l1'] == 1.0
    assert adversary.history[0]['loss_l1'] > 0


def test_load_state_dict_rebuilds_the_saved_strategy():
    cb = AdversarialTraining('eat')
    saved = AdversarialTraining('max').state_dict()
    cb.load_state_dict(saved)
    assert isinstance(cb.strategy, MAX)


# --- strategies ------------------------------------------------------------------------------------

def test_running_mean_edges():
    ema = RunningMean(0.0)                                         # beta 0: the last value
    ema.update(3.0), ema.update(5.0)
    assert ema.value == 5.0
    mean = RunningMean()
    mean.update(7.0, weight=0)                                     # nothing observed
    assert math.isnan(mean.value)


def test_reprs_and_seeds():
    assert repr(SingleNorm('L2')) == 'SingleNorm(l2)' and repr(EAT()) == 'EAT(linf, l1)'
    assert EAT(seed=3).seed == 3
    assert max(EAT().seed for _ in range(8)) > 2 ** 40              # drawn from [0, 2^62)
    restored = EAT(seed=9)
    restored.load_state_dict(EAT(seed=5).state_dict())
    assert restored.seed == 5 and EAT(seed=5).state_dict()['seed'] == 5


def test_eat_is_uniform_when_neither_norm_was_ever_broken():
    eat = EAT(seed=0)
    eat.observe('linf', torch.ones(4, dtype=torch.bool))
    eat.observe('l1', torch.ones(4, dtype=torch.bool))
    assert eat.probabilities() == {'linf': 0.5, 'l1': 0.5}


def test_scheme_names_and_switch_syntax():
    assert make_strategy('Linf').name == 'linf' and make_strategy(' inf ').name == 'linf'
    with pytest.raises(ValueError, match="^unknown training scheme 'eat>max': expected one of eat, linf, l2, l1, max, "
                                         "avg, msd, sat, ramp, eat-pair, or a switch such as 'l2>eat@45'$"):
        make_strategy('l2>eat>max@3')
    with pytest.raises(ValueError, match="^a switch reads 'first>second@epoch', e.g. 'l2>eat@45'; got 'l2>eat@x'$"):
        make_strategy('l2>eat@x')
    with pytest.raises(ValueError, match="^a switch reads"):
        make_strategy('l2>eat')


def test_switch_combines_its_two_strategies():
    s = Switch(EAT(seed=0), MAX(), 2)
    assert s.active is s.first
    assert s.one_norm_per_batch is False and s.accepts_loss is True
    assert Switch(EAT(), SingleNorm('l2'), 1).one_norm_per_batch is True
    assert Switch(EAT(), RAMP(), 1).accepts_loss is False
    assert set(Switch(MSD(), EATPair(), 1).stat_names) == {'step_linf', 'step_l2', 'step_l1', 'prob_linf', 'prob_l1', 'kl'}
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=f"^at_epoch must be an integer >= 1, got {bad!r}$"):
            Switch(EAT(), MAX(), bad)
    pair = Switch(RAMP(), EATPair(), 1)
    pair.set_mode(True)
    assert pair.first.lam_value == pair.second.lam_value == 0.5


def test_switch_state_names_the_active_strategy_and_restores_both():
    s = Switch(EAT(seed=0), EAT(seed=1), 1)
    s.set_epoch(1)
    s.first.observe('linf', torch.tensor([False, True]))
    state = s.state_dict()
    assert state['active'] == 'second'
    fresh = Switch(EAT(seed=7), EAT(seed=8), 1)
    fresh.load_state_dict(state)
    assert fresh.active is fresh.second and fresh.first.seed == 0
    assert fresh.first.rerr['linf'].value == 0.5


def test_multi_norm_counts_before_and_across_batches(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    fresh = MAX()
    assert fresh.state_dict()['wins'].dtype == torch.long and fresh.state_dict()['seen'] == 0
    assert fresh.stats() == {'max_linf': 0.0, 'max_l2': 0.0, 'max_l1': 0.0}
    one = MAX()
    one.perturb(settings(), tiny_net, x[:1], y[:1])                # a batch of one: its winner has share 1
    assert sum(one.stats().values()) == 1.0
    assert one.state_dict()['wins'].dtype == torch.long
    m = MSD()
    assert m.state_dict() == {'steps': {'linf': 0, 'l2': 0, 'l1': 0}}
    assert m.stats() == {'step_linf': 0.0, 'step_l2': 0.0, 'step_l1': 0.0}
    m.perturb(settings(), tiny_net, x[:1], y[:1])                  # one example, one step
    assert sum(m.state_dict()['steps'].values()) == 1 and sum(m.stats().values()) == 1.0
    m.perturb(settings(), tiny_net, x[:2], y[:2])                  # counts add up over batches
    assert sum(m.state_dict()['steps'].values()) == 3


# --- RAMP, EATPair, TRADES -------------------------------------------------------------------------

def test_ramp_kl_averages_over_the_correct_examples_only():
    out_q = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])      # example 0 correct, example 1 not
    out_r = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 0])
    _, _, l_kl = ramp_loss(out_q, out_r, y, 1.0)
    p = out_q[0].softmax(0)
    assert l_kl.item() == pytest.approx((p * (p.log() - out_r[0].log_softmax(0))).sum().item(), rel=1e-6)


def test_ramp_arguments_and_messages():
    RAMP(lam=0), RAMP(lam=0.5), EATPair(lam=0)                     # lam = 0 and lam < 1 are fine
    TRADES(beta=0.5)
    with pytest.raises(ValueError, match=r"^pair must name two different norms of linf, l2, l1, got \('l1', 'L1'\)$"):
        RAMP(pair=('l1', 'L1'))
    assert GradientProjection(1.0).beta == 1.0 and GradientProjection(0.5).history == []


@dataclass
class FixedAttack(AttackSettings):
    """Settings whose attack returns x shifted by the call's number, with given robustness flags."""
    flags: dict = None
    calls: list = field(default_factory=list)

    def run(self, model, x, y, norm, default_method='apgd', return_loss=False):
        self.calls.append((norm, default_method))
        return x + len(self.calls), self.flags[norm].clone()


def two_training_forwards(batch, y):
    """Call the batch's loss on two made-up outputs of the 2B points (q points correct, so there is
    a KL term); returns each call's KL term (lam = 1) and the last outputs."""
    kls = []
    for seed in (0, 1):
        pred = torch.randn(12, 10, generator=torch.Generator().manual_seed(seed))
        pred[torch.arange(6), y] += 3.0
        batch.loss_fn(pred)
        kls.append(ramp_loss(pred[:6], pred[6:], y, 1.0)[2].item())
    return kls, pred


def test_ramp_union_and_statistics_over_batches(tiny_net, batch):
    x, y = batch
    ramp = RAMP(lam=1.0)
    assert math.isnan(ramp.stats()['max_linf']) and math.isnan(ramp.stats()['kl'])
    flags = {'linf': torch.tensor([True, True, False, False, True, True]),
             'l1': torch.tensor([True, False, True, False, True, True])}
    b = ramp.perturb(FixedAttack(flags=flags), tiny_net, x, y)
    assert b.robust['union'].tolist() == [True, False, False, False, True, True]
    kls, pred = two_training_forwards(b, y)
    assert ramp.stats()['kl'] == pytest.approx(sum(kls) / 2)
    ramp.set_mode(True)
    restored = RAMP()
    restored.load_state_dict(ramp.state_dict())
    assert restored.lam_value == 1.0 and restored.default_lam == 0.5
    ramp.set_epoch(1)
    assert math.isnan(ramp.stats()['kl'])


def test_eat_pair_passes_on_its_arguments_and_averages_its_kl(tiny_net, batch):
    x, y = batch
    pair = EATPair(lam=1.0, beta=0.9, seed=4)
    assert pair.seed == 4 and pair.rerr['linf'].beta == 0.9
    assert math.isnan(pair.stats()['kl'])
    flags = {n: torch.ones(6, dtype=torch.bool) for n in ('linf', 'l1')}
    b = pair.perturb(FixedAttack(flags=flags), tiny_net, x, y)
    kls, pred = two_training_forwards(b, y)
    assert pair.stats()['kl'] == pytest.approx(sum(kls) / 2)
    pair.set_epoch(1)
    assert math.isnan(pair.stats()['kl'])
    pair.perturb(FixedAttack(flags=flags), tiny_net, x, y).loss_fn(pred)   # the new epoch's mean starts afresh
    assert pair.stats()['kl'] == pytest.approx(kls[-1])


def test_trades_loss_with_more_classes_than_examples():
    g = torch.Generator().manual_seed(0)
    clean, y = torch.randn(3, 10, generator=g), torch.tensor([1, 4, 9])
    adv = torch.randn(6, 10, generator=g)                          # two adversarial sets of the batch
    log_p = clean.log_softmax(1)
    kl = sum((log_p.exp() * (log_p - a.log_softmax(1))).sum() for a in (adv[:3], adv[3:])) / 6
    expected = nn.functional.cross_entropy(clean, y) + 2.0 * kl
    assert trades_loss(clean, adv, y, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)


# --- DecayAll, GradientProjection's pieces, Checkpointing ------------------------------------------

def test_decay_all_switches_decay_on_for_the_fit_and_gives_back_each_flag():
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    learn.create_opt()                                             # fastai: BatchNorm and biases exempt
    bn_bias = learn._bn_bias_state(True)
    others = learn._bn_bias_state(False)
    assert bn_bias and all(s['do_wd'] is False for s in bn_bias)
    cb = DecayAll()
    learn.add_cb(cb)
    cb.before_fit()
    assert all(s['do_wd'] is True for s in bn_bias) and all(s.get('do_wd', True) for s in others)
    cb.after_fit()
    assert all(s['do_wd'] is False for s in bn_bias)
    cb.after_fit()                                                 # twice: nothing left to give back
    DecayAll().after_fit()                                         # without a fit: nothing to do
    kept = tiny_learner(tiny_dls(n_train=16, bs=16), wd_bn_bias=True)
    kept.create_opt()                                              # fastai leaves no flag: decay on
    cb = DecayAll()
    kept.add_cb(cb)
    cb.before_fit(), cb.after_fit()
    assert all(s.get('do_wd') is True for s in kept._bn_bias_state(True))


def test_project_update_with_beta_one_takes_the_projected_natural_update():
    f_r, f_a, f_n = torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([2.0, 2.0])
    new, cos = project_update(f_r, f_a, f_n, beta=1.0)
    assert torch.allclose(new, cos * f_n)


def test_gradient_projection_seeds_its_stream_and_follows_bf16():
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    gp = GradientProjection(0.5)
    learn.add_cb(gp)
    gp.before_fit()
    expected = torch.Generator().manual_seed(torch.initial_seed() + 1).get_state()
    assert torch.equal(gp._random.state['cpu'], expected)
    assert gp._round is None and gp.resume_state()['round'] is None
    assert not gp._autocast()._enabled
    learn.add_cb(MixedPrecision(amp_mode=AMPMode.BF16))
    ac = gp._autocast()
    assert ac._enabled and ac.fast_dtype == torch.bfloat16
    gp.after_fit()
    assert gp._round is None


def test_checkpointing_refuses_bad_every_and_foreign_files(tmp_path):
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"^every must be an integer >= 1, got {bad!r}$"):
            Checkpointing(tmp_path / 'r.pt', every=bad)
    torch.save([1, 2], tmp_path / 'list.pt')
    torch.save({'format': 'other'}, tmp_path / 'dict.pt')
    for name in ('list.pt', 'dict.pt'):
        cb = Checkpointing(tmp_path / name, resume=True)
        tiny_learner(tiny_dls(n_train=16, bs=16)).add_cb(cb)
        with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / name))} is not an eatai resume checkpoint$"):
            cb._load()


def test_sat_attacks_with_pgd_and_eat_with_apgd(tiny_net, batch):
    """The paper's baselines use PGD, E-AT uses APGD: each strategy names its default to the settings."""
    x, y = batch
    flags = {n: torch.ones(6, dtype=torch.bool) for n in ('linf', 'l2', 'l1')}
    for strategy, method in ((SAT(seed=0), 'pgd'), (EAT(seed=0), 'apgd')):
        attack = FixedAttack(flags=flags)
        strategy.perturb(attack, tiny_net, x, y)
        assert [m for _, m in attack.calls] == [method]


def test_max_counts_wins_over_every_batch_of_the_epoch(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    m = MAX()
    m.set_epoch(0)
    for i in range(3):
        m.perturb(settings(), tiny_net, x[2 * i:2 * i + 2], y[2 * i:2 * i + 2])
    assert int(m.state_dict()['wins'].sum()) == m.state_dict()['seen'] == 6


@pytest.mark.parametrize('method', ['pgd', 'apgd'])
def test_trades_settings_run_the_kl_attack_of_that_method(tiny_net, batch, method):
    """TRADES: the attack maximises the KL to the clean prediction from a random start, as the
    attack function itself does when asked directly."""
    from eatai.attacks.pgd import pgd
    x, y = batch
    tiny_net.eval()
    s = settings(n_iter=2, method=method)
    s.attack_loss = 'kl'
    torch.manual_seed(0)
    x_adv, _ = s.run(tiny_net, x, y, 'l2')
    torch.manual_seed(0)
    attack = pgd if method == 'pgd' else apgd
    ref, _ = attack(tiny_net, x, y, 'l2', s.eps['l2'], 2, loss='kl', random_start=True)
    assert torch.equal(x_adv, ref)


def test_default_settings_are_the_papers():
    s = AttackSettings.build()
    assert s.n_iter == {'linf': 10, 'l2': 10, 'l1': 10} and s.method is None
    assert Checkpointing('x.pt').every == 50
