"""The recipes' rules without training: learning-rate schedules at their edges, argument checks,
and what `set_adversary` hands the callback (scheme mode, radii, APGD options, precision, loss)."""
import pytest
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from test_training import tiny_dls, tiny_learner

from eatai.all import RAMP, TRADES, AdversarialTraining, finetune_schedule, piecewise_schedule, set_adversary
from eatai.models.cifar_cnn import CifarCNN


def test_finetune_schedule_never_goes_below_lr_over_100():
    schedule = finetune_schedule(1.0)
    assert [schedule(p) for p in (0.0, 0.34, 0.67, 0.999, 1.0)] == pytest.approx([1.0, 0.1, 0.01, 0.01, 0.01])


def test_piecewise_schedule_accepts_decay_at_1_and_rejects_beyond():
    never = piecewise_schedule(1.0, decay_at=1.0)          # no decay within the run
    assert never(0.999) == 1.0
    for bad in (0, -0.5, 1.5, 2.0):
        with pytest.raises(ValueError, match=r"^decay_at must be in \(0, 1\], got"):
            piecewise_schedule(1.0, decay_at=bad)


@pytest.mark.parametrize('epochs', [0, 2.5, True, '3'])
def test_epoch_counts_are_checked_before_training(epochs):
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    with pytest.raises(ValueError, match='^the number of epochs must be an integer >= 1, got'):
        learn.fit_adversarial(epochs, lr=0.01)
    with pytest.raises(ValueError, match='^the number of epochs must be an integer >= 1, got'):
        learn.finetune_adversarial('eat', epochs=epochs, lr=0.01)
    assert not any(isinstance(cb, AdversarialTraining) for cb in learn.cbs)


@pytest.mark.parametrize('lr', [0, 0.0, -0.1, float('inf'), '0.1'])
def test_learning_rates_are_checked_before_training(lr):
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    with pytest.raises(ValueError, match='^lr must be a number > 0, got'):
        learn.eat_finetune(epochs=1, lr=lr)
    assert not any(isinstance(cb, AdversarialTraining) for cb in learn.cbs)


def test_set_adversary_chooses_the_schemes_mode():
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    assert set_adversary(learn, 'ramp').strategy.lam_value == RAMP.LAM_SCRATCH
    assert set_adversary(learn, 'ramp', finetune=True).strategy.lam_value == RAMP.LAM_FINETUNE


def test_set_adversary_passes_apgd_options_and_the_loss():
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    trades = TRADES(beta=2.0)
    cb = set_adversary(learn, 'eat', loss=trades, rho=0.5, l1_sparsity=0.1)
    assert cb.settings.apgd_options == {'rho': 0.5, 'l1_sparsity': 0.1}
    assert cb.loss is trades and cb.settings.attack_loss == 'kl'


def test_a_plain_fastai_learner_gets_cifar10_radii():
    dls = tiny_dls(n_train=16, bs=16)
    learn = Learner(dls, CifarCNN(width=4), loss_func=CrossEntropyLossFlat())   # no threat_dataset attribute
    cb = set_adversary(learn, 'eat')
    assert cb.settings.eps == pytest.approx({'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0})
    assert cb.settings.n_iter == {'linf': 10, 'l2': 10, 'l1': 10}                   # the paper's 10 steps


def test_the_users_attack_precision_outlives_re_arming():
    learn = tiny_learner(tiny_dls(n_train=16, bs=16))
    assert set_adversary(learn, 'eat').attack_precision == 'auto'
    learn.remove_cb(AdversarialTraining)
    learn.add_cb(AdversarialTraining('linf', attack_precision='fp32'))
    cb = set_adversary(learn, 'eat')
    assert cb.attack_precision == 'fp32'
    assert [c for c in learn.cbs if isinstance(c, AdversarialTraining)] == [cb]   # the old one is gone
