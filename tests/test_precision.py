"""Attacks under mixed precision: autocast in the learner's dtype, fp32 projection, or fp32 on request."""
import pytest
import torch
from fastai.callback.fp16 import MixedPrecision
from test_training import N_ITER, Spy, tiny_learner

from eatai.attacks import apgd, make_ball
from eatai.callbacks import AdversarialTraining


def attack_dtypes(learn):
    seen = []
    learn.model.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    return seen


@pytest.mark.parametrize('precision, expected', [('auto', torch.bfloat16), ('fp32', torch.float32)])
def test_attack_precision_follows_mixed_precision(precision, expected):
    learn = tiny_learner(cbs=[MixedPrecision(amp_mode='bf16')])
    seen = attack_dtypes(learn)
    after = Spy(20)
    learn.eat_finetune(epochs=1, lr=0.01, n_iter=N_ITER, cbs=[after])
    cb = learn.adversarial_training
    if precision == 'fp32':   # re-run with full-precision attacks
        learn.remove_cb(cb)
        learn.add_cb(AdversarialTraining('eat', cb.settings, attack_precision='fp32'))
        seen.clear()
        learn.fit(1, 0.001, cbs=[after])
    attack = [dtype for training, dtype in seen if not training][:-1]      # minus the validation pass
    assert attack and set(attack) == {expected}
    for x_adv, norm in zip(after.train, after.norms):
        assert x_adv.dtype == torch.float32    # inputs, steps and projections stay fp32


def test_bad_precision_name():
    with pytest.raises(ValueError, match='attack_precision'):
        AdversarialTraining('eat', attack_precision='fp8')


@pytest.mark.parametrize('norm, eps', [('linf', 8 / 255), ('l1', 12.0)])
def test_bf16_attack_stays_in_the_ball(norm, eps, tiny_net, batch):
    x, y = batch
    with torch.autocast('cpu', dtype=torch.bfloat16):
        x_adv, correct = apgd(tiny_net, x, y, norm, eps, grad_scale=1024.0)
    assert x_adv.dtype == torch.float32 and make_ball(norm, eps).contains(x, x_adv).all()
