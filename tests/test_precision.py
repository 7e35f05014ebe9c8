"""Attacks under mixed precision: autocast in the learner's dtype, fp32 projection, or fp32 on request."""
import pytest
import torch
from fastai.callback.fp16 import MixedPrecision
from test_training import N_ITER, Spy, tiny_learner
from torch import nn

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


@pytest.mark.parametrize('norm, eps, p', [('linf', 8 / 255, float('inf')), ('l2', 0.5, 2), ('l1', 12.0, 1)])
def test_bf16_model_and_inputs_are_attacked_in_bf16(norm, eps, p, tiny_net, batch):
    """Without autocast, a bf16 model on bf16 inputs: the steps (their sizes included) in the inputs'
    dtype, in the ball up to bf16's rounding of x + delta (half a unit, 2**-9, near 1)."""
    x, y = batch
    x16 = x.bfloat16()
    x_adv, correct = apgd(tiny_net.eval().bfloat16(), x16, y, norm, eps, 3)
    assert x_adv.dtype == torch.bfloat16 and correct.dtype == torch.bool
    distance = (x_adv.float() - x16.float()).flatten(1).norm(p=p, dim=1)
    assert (distance <= 1.02 * eps + 2 ** -8).all() and (distance > 0.9 * eps).all()


def faint(weight):
    """A linear model sure of class 0 (logit 10), with weights `weight`: its input gradient of the
    cross-entropy is about 1e-3 * weight per coordinate, below fp16's smallest number (6e-8) for small weights."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).eval()
    with torch.no_grad():
        model[1].weight.fill_(weight)[0] = -weight
        model[1].bias.zero_()[0] = 10.0
    return model, torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(4, dtype=torch.long)


def test_grad_scale_keeps_fp16_input_gradients_from_underflowing():
    """Under fp16 autocast a gradient of 1e-8 underflows to 0 and APGD (no random start) takes its
    first step nowhere; with the loss scaled by 1024 for the backward pass it steps eps away. (Its
    loss does not change in fp16 either way, so the attack returns x: the steps are looked at.)"""
    model, x, y = faint(1e-5)
    points = []
    model.register_forward_pre_hook(lambda m, args: points.append(args[0].detach()))
    with torch.autocast('cpu', dtype=torch.float16):
        apgd(model, x, y, 'linf', 0.03, 2)
        apgd(model, x, y, 'linf', 0.03, 2, grad_scale=1024.0)
    unscaled, scaled = points[1], points[4]                           # each run: x, its first step, its second
    assert torch.equal(unscaled, x) and torch.allclose((scaled - x).abs().amax(dim=(1, 2, 3)), torch.tensor(0.03))
