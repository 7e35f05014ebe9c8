"""PGD / SLIDE and MSD, the attacks behind the paper's baselines."""
import numpy as np
import pytest
import torch
from conftest import CountingModel
from test_apgd import linear_problem

from eatai.attacks import make_ball
from eatai.attacks.losses import ce_loss
from eatai.attacks.msd import msd
from eatai.attacks.pgd import PGD_STEP, pgd, steepest_direction
from eatai.threats import NORMS

EPS = {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0}


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('keep', ['last', 'loss'])
def test_pgd_in_ball_flags_and_budget(norm, keep, tiny_net, batch):
    x, y = batch
    counting = CountingModel(tiny_net.eval())
    x_adv, correct, loss = pgd(counting, x, y, norm, EPS[norm], n_iter=5, keep=keep, return_loss=True)
    assert counting.n_forward == 6
    assert make_ball(norm, EPS[norm]).contains(x, x_adv).all()
    with torch.no_grad():
        logits = tiny_net(x_adv)
    assert torch.allclose(ce_loss(logits, y), loss, atol=1e-5)
    assert not torch.any(correct & (logits.argmax(1) != y))
    if keep == 'loss':
        with torch.no_grad():
            assert torch.all(loss >= ce_loss(tiny_net(x), y) - 1e-6)


def test_pgd_default_steps_follow_the_paper():
    assert PGD_STEP['linf'] == 1 / 4 and PGD_STEP['l2'] == 1 / 3


@pytest.mark.parametrize('norm, eps', [('linf', 0.02), ('l2', 0.3)])
def test_pgd_exact_on_linear_classifier(norm, eps):
    model, x, y, exact, margin = linear_problem(norm, eps)
    x_adv, correct = pgd(model, x, y, norm, eps, n_iter=10, keep='loss')
    decided = np.abs(exact) > 1e-2 * np.abs(exact).max()
    assert np.array_equal(correct.numpy()[decided], exact[decided] > 0)
    assert np.all(margin(x_adv) >= exact - 1e-6)


def test_slide_is_sparse_and_skips_blocked_coordinates():
    ball = make_ball('l1', 12.0)
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(2, 3, 32, 32, generator=g)
    x_adv = torch.rand(2, 3, 32, 32, generator=g)
    x_adv[grad > 2] = 1.0              # the largest positive gradients are blocked by the box
    d = steepest_direction(ball, grad, x_adv)
    moved = d != 0
    assert not torch.any(moved & (grad > 2))
    assert moved.flatten(1).sum(1).tolist() == pytest.approx([31, 31], abs=2)   # top 1% of 3072
    assert torch.allclose(d.abs().flatten(1).sum(1), torch.ones(2))


def test_slide_near_optimal_on_linear_classifier():
    model, x, y, exact, margin = linear_problem('l1', 0.5)
    x_adv, correct = pgd(model, x, y, 'l1', 0.5, n_iter=10, keep='loss')
    found = margin(x_adv)
    assert np.all(found >= exact - 1e-6)
    assert (correct.numpy() != (exact > 0)).mean() <= 0.1


def test_msd_takes_the_best_candidate_step(tiny_net, batch):
    """With one iteration: the output is, per example, the highest-loss of the three steps."""
    x, y = batch
    tiny_net.eval()
    x_adv, correct, chosen, loss = msd(tiny_net, x, y, EPS, n_iter=1, return_loss=True)
    x_req = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(ce_loss(tiny_net(x_req), y).sum(), x_req)
    with torch.no_grad():
        cands = torch.stack([make_ball(n, e).project(x, x + PGD_STEP[n] * e * steepest_direction(make_ball(n, e), grad, x))
                             for n, e in EPS.items()])
        losses = torch.stack([ce_loss(tiny_net(c), y) for c in cands])
        pick = losses.argmax(0)
        best = cands[pick, torch.arange(len(y))]
        clean_loss = ce_loss(tiny_net(x), y)
    expected = torch.where((losses.max(0).values > clean_loss).reshape(-1, 1, 1, 1), best, x)
    assert torch.allclose(x_adv, expected)
    assert chosen == {n: int((pick == i).sum()) for i, n in enumerate(EPS)}
    assert torch.allclose(loss, torch.maximum(losses.max(0).values, clean_loss))


def test_msd_budget_and_union_membership(tiny_net, batch):
    x, y = batch
    counting = CountingModel(tiny_net.eval())
    x_adv, correct, chosen = msd(counting, x, y, EPS, n_iter=4)
    assert counting.n_forward == 4 * 4              # per iteration: 3 candidates + 1 gradient pass
    assert sum(chosen.values()) == 4 * len(y)
    inside = torch.stack([make_ball(n, e).contains(x, x_adv) for n, e in EPS.items()]).any(0)
    assert inside.all()                              # every point lies in (at least) one ball


def test_bad_arguments(tiny_net, batch):
    x, y = batch
    with pytest.raises(ValueError, match='keep'):
        pgd(tiny_net, x, y, 'linf', 0.1, keep='best')
    with pytest.raises(ValueError, match='n_iter'):
        pgd(tiny_net, x, y, 'linf', 0.1, n_iter=0)
    with pytest.raises(ValueError, match='step_size'):
        pgd(tiny_net, x, y, 'linf', 0.1, step_size=-1)
    with pytest.raises(ValueError, match='threat'):
        msd(tiny_net, x, y, {})
