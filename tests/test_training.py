"""The adversarial-training callback, its strategies, the learner factory and the recipes,
on tiny real fastai Learners."""
import math

import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.transforms import Normalize
from fastai.torch_core import set_seed
from torch import nn

from eatai.all import (
    EAT,
    Normalized,
    SingleNorm,
    arrays_dls,
    build_model,
    finetune_schedule,
    make_strategy,
    piecewise_schedule,
    robust_learner,
    save_checkpoint,
)
from eatai.attacks import make_ball
from eatai.callbacks import AttackSettings, RunningMean
from eatai.models.cifar_cnn import CifarCNN

N_ITER = 2   # attack steps in these tests: enough to exercise the loop, cheap on CPU


def tiny_dls(n_train=48, n_valid=16, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_valid, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_train + n_valid,), generator=g)
    return arrays_dls(x[:n_train], y[:n_train], x[n_train:], y[n_train:], bs=bs)


def tiny_learner(dls=None, **kwargs):
    set_seed(0)
    dls = dls or tiny_dls()
    return robust_learner(dls, Normalized(CifarCNN(width=4), (0.5,) * 3, (0.25,) * 3), **kwargs)


class Spy(Callback):
    """Records what the model sees, before (order 0) or after (order 20) the attack."""

    def __init__(self, order):
        self.order, self.train, self.valid, self.lrs, self.norms, self.modes = order, [], [], [], [], []

    def before_batch(self):
        (self.train if self.training else self.valid).append(self.xb[0].detach().clone())
        if self.training:
            adv = self.learn.adversarial_training
            self.norms.append(getattr(getattr(adv, '_batch', None), 'norm', None) if self.order > adv.order else None)

    def after_pred(self):
        self.modes.append(self.model.training)

    def before_step(self):   # after ParamScheduler (order 60) set this batch's lr
        self.lrs.append(self.opt.hypers[-1]['lr'])


# --- the callback ---------------------------------------------------------------------------

def test_training_batches_are_adversarial_and_validation_stays_clean():
    learn = tiny_learner()
    before, after = Spy(0), Spy(20)
    learn.eat_finetune(epochs=1, lr=0.01, n_iter=N_ITER, cbs=[before, after])
    settings = learn.adversarial_training.settings
    assert len(after.train) == 3 and len(after.valid) == 1
    for clean, adv, norm in zip(before.train, after.train, after.norms):
        assert norm in ('linf', 'l1')
        assert not torch.equal(clean, adv)
        assert make_ball(norm, settings.eps[norm]).contains(clean, adv).all()
    for clean, seen in zip(before.valid, after.valid):
        assert torch.equal(clean, seen)
    assert all(after.modes[:3]) and not any(after.modes[3:])   # trains in train mode, validates in eval


def test_attack_runs_in_eval_mode_and_train_forward_once():
    learn = tiny_learner()
    modes = []
    learn.model.register_forward_hook(lambda m, i, o: modes.append(m.training))
    learn.transfer_finetune('l2', epochs=1, lr=0.01, n_iter=N_ITER)
    n_batches = 3
    assert modes.count(True) == n_batches                     # one training forward per batch
    assert modes.count(False) == n_batches * (N_ITER + 1) + 1   # the attacks' forwards + one validation batch


def test_batchnorm_statistics_move_only_with_training_forwards():
    learn = tiny_learner()
    bn = next(m for m in learn.model.modules() if isinstance(m, nn.BatchNorm2d))
    learn.transfer_finetune('linf', epochs=1, lr=0.01, n_iter=N_ITER)
    assert bn.num_batches_tracked.item() == 3


def test_epoch_statistics_in_recorder_and_history():
    learn = tiny_learner(tiny_dls(n_train=96))
    after = Spy(20)
    learn.eat_finetune(epochs=2, lr=0.01, n_iter=N_ITER, cbs=[after])
    cb = learn.adversarial_training
    names = list(learn.recorder.metric_names)
    for col in ('freq_linf', 'freq_l1', 'rerr_linf', 'rerr_l1', 'loss_linf', 'loss_l1'):
        assert col in names
    assert len(cb.history) == 2 and len(learn.recorder.values) == 2
    epoch0 = cb.history[0]
    assert epoch0['freq_linf'] + epoch0['freq_l1'] == pytest.approx(1)
    assert epoch0['freq_l1'] == pytest.approx(after.norms[:6].count('l1') / 6)
    row = dict(zip(names[1:], learn.recorder.values[0]))
    assert row['freq_l1'] == pytest.approx(epoch0['freq_l1'])
    for norm in ('linf', 'l1'):
        r = epoch0[f'rerr_{norm}']
        assert math.isnan(r) or 0 <= r <= 1
    # the stat columns leave the learner's metrics once the fit is over
    assert not any(type(m).__name__ == 'EpochStat' for m in learn.metrics)


def test_robust_error_statistic_counts_the_attack_flags():
    learn = tiny_learner()
    flags = []

    class Flags(Callback):
        order, run_valid = 20, False

        def before_batch(self):
            flags.append(self.learn.adversarial_training._batch.robust['linf'])
    learn.transfer_finetune('linf', epochs=1, lr=0.01, n_iter=N_ITER, cbs=[Flags()])
    expected = 1 - torch.cat(flags).float().mean().item()
    assert learn.adversarial_training.history[0]['rerr_linf'] == pytest.approx(expected)


# --- E-AT sampling --------------------------------------------------------------------------

def test_eat_is_uniform_until_both_norms_are_seen():
    s = EAT(seed=0)
    assert s.probabilities() == {'linf': 0.5, 'l1': 0.5}
    s.rerr['linf'].update(0.6)
    assert s.probabilities() == {'linf': 0.5, 'l1': 0.5}
    s.rerr['l1'].update(0.2)
    p = s.probabilities()
    assert p['linf'] == pytest.approx(0.75) and p['l1'] == pytest.approx(0.25)   # eq. (6)


def test_eat_draws_follow_the_probabilities():
    s = EAT(seed=1)
    s.rerr['linf'].update(0.8), s.rerr['l1'].update(0.2)
    draws = [s.choose() for _ in range(4000)]
    assert draws.count('l1') / 4000 == pytest.approx(0.2, abs=0.025)


def test_eat_samples_the_weaker_norm_more_during_training():
    s = EAT(seed=0)

    class Settings:   # l1 always breaks, l-inf never
        def run(self, model, x, y, norm, method):
            return x, torch.full((len(y),), norm == 'linf')
    for _ in range(200):
        s.perturb(Settings(), None, torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    assert s.probabilities()['l1'] == pytest.approx(1.0)


def test_eat_state_round_trips_and_reproduces_the_draws():
    s = EAT(seed=3)
    s.rerr['linf'].update(0.7), s.rerr['l1'].update(0.4)
    state = s.state_dict()
    expected = [s.choose() for _ in range(20)]
    t = EAT(seed=99)
    t.load_state_dict(state)
    assert t.probabilities() == s.probabilities()
    assert [t.choose() for _ in range(20)] == expected


def test_eat_statistics_count_every_attacked_example_since_the_start():
    """As the authors' code: rerr_p = errors / examples over all batches attacked in p so far."""
    s = EAT(seed=0)
    outcomes = {'linf': [], 'l1': []}

    class Settings:   # l-inf breaks 3 of 4 examples, l1 1 of 2
        def run(self, model, x, y, norm, method):
            correct = torch.tensor([True, False, False, False][:len(y)] if norm == 'linf' else [True, False] * (len(y) // 2))
            outcomes[norm].append(correct)
            return x, correct
    for bs in (4, 2, 4, 2, 4, 4, 2, 4) * 5:
        s.perturb(Settings(), None, torch.zeros(bs, 1), torch.zeros(bs, dtype=torch.long))
    for norm, flags in outcomes.items():
        flags = torch.cat(flags)
        assert s.rerr[norm].value == pytest.approx((~flags).sum().item() / len(flags))
    ema = EAT(beta=0.5, seed=0)
    assert ema.rerr['linf'].beta == 0.5 and s.rerr['linf'].beta is None


def test_running_mean_is_weighted_or_debiased():
    m = RunningMean()
    assert math.isnan(m.value)
    m.update(0.5, weight=2), m.update(1.0, weight=6), m.update(0.3, weight=0)
    assert m.value == pytest.approx(7 / 8)
    with pytest.raises(ValueError, match='beta'):
        RunningMean(1.0)
    m = RunningMean(0.9)
    assert math.isnan(m.value)
    m.update(0.4)
    assert m.value == pytest.approx(0.4)
    m.update(0.4)
    assert m.value == pytest.approx(0.4)


def test_make_strategy():
    assert isinstance(make_strategy('eat'), EAT)
    assert make_strategy('Linf').norms == ('linf',)
    assert isinstance(make_strategy(SingleNorm('l1')), SingleNorm)
    with pytest.raises(ValueError, match='bogus'):
        make_strategy('bogus')


# --- schedules ------------------------------------------------------------------------------

def test_finetune_lr_is_divided_by_10_at_each_epoch():
    learn = tiny_learner()
    rec = Spy(20)
    learn.eat_finetune(epochs=3, lr=0.05, n_iter=1, cbs=[rec])
    assert rec.lrs == pytest.approx([0.05] * 3 + [0.005] * 3 + [0.0005] * 3)


def test_single_epoch_finetune_divides_at_each_third():
    learn = tiny_learner(tiny_dls(n_train=96))
    rec = Spy(20)
    learn.eat_finetune(epochs=1, lr=0.01, n_iter=1, cbs=[rec])
    assert rec.lrs == pytest.approx([0.01] * 2 + [0.001] * 2 + [0.0001] * 2)


def test_longer_finetuning_divides_at_each_third_of_the_run():
    """5 epochs (Table 8): lr for epochs 0-1, / 10 for epochs 2-3, / 100 for epoch 4, as the authors' code."""
    learn = tiny_learner(tiny_dls(n_train=48))
    rec = Spy(20)
    learn.eat_finetune(epochs=5, lr=0.05, n_iter=1, cbs=[rec])
    per_epoch = [rec.lrs[i:i + 3] for i in range(0, 15, 3)]
    assert [e[0] for e in per_epoch] == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005])
    assert min(rec.lrs) == pytest.approx(0.0005)


def test_schedule_functions():
    f = finetune_schedule(0.05)
    assert [f(p) for p in (0, 0.33, 1 / 3, 0.5, 2 / 3, 0.99)] == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005])
    g = piecewise_schedule(0.05)
    assert g(69 / 80) == 0.05 and g(70 / 80) == pytest.approx(0.005)
    with pytest.raises(ValueError):
        piecewise_schedule(0.05, 0)


def test_fit_adversarial_piecewise_schedule():
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    rec = Spy(20)
    learn.fit_adversarial(8, lr=0.05, scheme='linf', n_iter=1, cbs=[rec])
    assert rec.lrs == pytest.approx([0.05] * 7 + [0.005])


@pytest.mark.parametrize('call', [lambda l: l.eat_finetune(epochs=0), lambda l: l.eat_finetune(lr=-1),
                                  lambda l: l.eat_finetune(n_iter=0), lambda l: l.transfer_finetune('l3'),
                                  lambda l: l.fit_adversarial(2, scheme='nope'), lambda l: l.eat_finetune(eps={'l1': 0})])
def test_recipes_refuse_bad_arguments_before_training(call):
    learn = tiny_learner()
    with pytest.raises(ValueError):
        call(learn)


# --- learner factory ------------------------------------------------------------------------

def test_paper_optimizer_couples_weight_decay():
    learn = tiny_learner()
    learn.create_opt()
    hp = learn.opt.hypers[0]
    assert hp['mom'] == 0.9 and hp['wd'] == 5e-4
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.zeros(3)
    opt = learn.opt_func([p], lr=0.1)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.1 * 5e-4))   # L2 in the gradient


def test_refuses_normalizing_dataloaders():
    dls = tiny_dls()
    dls.train.after_batch.add(Normalize.from_stats((0.5,) * 3, (0.25,) * 3))
    with pytest.raises(ValueError, match='Normalize'):
        robust_learner(dls, 'cifar_cnn')


def test_refuses_data_outside_unit_range():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    with pytest.raises(ValueError, match=r'\[0,1\]|\[0, 1\]'):
        robust_learner(arrays_dls(x[:16], y[:16], x[16:], y[16:], bs=8, augment=False), 'cifar_cnn')


def test_arch_forms(tmp_path):
    dls = tiny_dls()
    bare = CifarCNN(width=4)
    assert robust_learner(dls, bare).model is bare                      # taken as it is
    wrapped = robust_learner(dls, bare, mean=(0.5,) * 3, std=(0.2,) * 3).model
    assert isinstance(wrapped, Normalized) and wrapped.model is bare
    named = robust_learner(dls, 'cifar_cnn').model
    assert isinstance(named, Normalized) and named.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    original = build_model('cifar_cnn', 10, width=4).eval()
    path = save_checkpoint(original, tmp_path / 'm.pt', 'cifar_cnn', {'width': 4})
    loaded = robust_learner(dls, path).model.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), original(x))
    with pytest.raises(ValueError, match='unknown model'):
        robust_learner(dls, 'no_such_model_xyz')
    with pytest.raises(TypeError):
        robust_learner(dls, 42)
    with pytest.raises(FileNotFoundError):
        robust_learner(dls, tmp_path / 'missing.pt')
    state = tmp_path / 'w.pth'
    torch.save({'state_dict': {f'module.{k}': v for k, v in original.model.state_dict().items()}}, state)
    from_weights = robust_learner(dls, CifarCNN(width=4), weights=state, mean=(0.5,) * 3, std=(0.5,) * 3).model.eval()
    original.mean.fill_(0.5), original.std.fill_(0.5)
    assert torch.equal(from_weights(x), original(x))   # wrappers and prefixes of training scripts load


def test_save_and_load_keep_the_strategy_state(tmp_path):
    learn = tiny_learner(path=tmp_path)
    learn.eat_finetune(epochs=1, lr=0.01, n_iter=N_ITER)
    cb = learn.adversarial_training
    path = learn.save('ft')
    saved = torch.load(path, weights_only=False)
    assert saved['eatai']['strategy'] == 'eat' and saved['eatai']['history'] == cb.history
    fresh = tiny_learner(path=tmp_path)
    fresh.load('ft')
    restored = fresh.adversarial_training
    assert restored.strategy.probabilities() == cb.strategy.probabilities()
    assert [restored.strategy.choose() for _ in range(10)] == [cb.strategy.choose() for _ in range(10)]
    assert restored.settings == cb.settings
    for a, b in zip(fresh.model.parameters(), learn.model.parameters()):
        assert torch.equal(a, b)


def test_attack_settings():
    s = AttackSettings.build('cifar10', eps=['l1:10'], n_iter={'linf': 5, 'l1': 15})
    assert s.eps['l1'] == 10 and s.eps['linf'] == pytest.approx(8 / 255) and s.n_iter == {'linf': 5, 'l2': 10, 'l1': 15}
    assert AttackSettings.build('imagenet').eps['l1'] == 255
    with pytest.raises(ValueError):
        AttackSettings.build(n_iter=0)
