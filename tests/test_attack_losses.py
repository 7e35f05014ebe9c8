"""The attack losses against their formulas (AutoAttack's DLR and targeted DLR, TRADES' KL), and
APGD-T's loop over target classes: which ranks it attacks, with which options, in eval mode."""
import warnings

import pytest
import torch
from conftest import CountingModel, InputRecorder, TinyNet
from torch import nn

from eatai.attacks import EVALUATION, apgd, apgd_targeted
from eatai.attacks.losses import ce_targeted_loss, dlr_loss, dlr_targeted_loss, kl_loss
from eatai.attacks.syncs import count_host_syncs

pytestmark = pytest.mark.usefixtures('one_thread')


def test_dlr_loss_is_autoattacks_formula_per_example():
    z = torch.tensor([[5.0, 3.0, 1.0, 0.0],      # true class 0 on top: the best wrong class is the 2nd
                      [2.0, 6.0, 1.0, 0.5]])     # true class 0 not on top: the best wrong class is the 1st
    y = torch.tensor([0, 0])
    expected = torch.tensor([-(5 - 3) / (5 - 1), -(2 - 6) / (6 - 1)])
    assert torch.allclose(dlr_loss(z, y), expected)
    # the top three logits tied (saturated outputs): + 1e-12 in the denominator, as AutoAttack, keeps the sign
    assert dlr_loss(torch.tensor([[0.0, 0.0, 0.0, -1.0]]), torch.tensor([3])).item() == pytest.approx(1e12)


def test_targeted_dlr_and_ce_are_autoattacks_formulas_per_example():
    z = torch.tensor([[5.0, 3.0, 1.0, 0.0, -1.0], [1.0, 4.0, 2.0, 0.0, 3.0]])
    y, t = torch.tensor([0, 2]), torch.tensor([1, 4])
    expected = torch.tensor([-(5 - 3) / (5 - 0.5 * (1 + 0)), -(2 - 3) / (4 - 0.5 * (2 + 1))])
    assert torch.allclose(dlr_targeted_loss(z, y, t), expected)
    ce = ce_targeted_loss(z, y, t)
    assert ce.shape == (2,)
    assert torch.allclose(ce, torch.log_softmax(z, 1)[torch.arange(2), t])   # minus the CE to the target
    tied = torch.tensor([[0.0, 0.0, 0.0, 0.0, -1.0]])                       # the top four tied
    assert dlr_targeted_loss(tied, torch.tensor([4]), torch.tensor([0])).item() == pytest.approx(1e12)


def test_kl_loss_is_kl_from_the_reference():
    g = torch.Generator().manual_seed(0)
    ref, out = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    p, q = ref.softmax(1), out.softmax(1)
    assert torch.allclose(kl_loss(out, None, ref), (p * (p.log() - q.log())).sum(1), atol=1e-6)
    assert torch.allclose(kl_loss(ref, None, ref), torch.zeros(3), atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter('error')                                # softmax over the class dim, named: no warning
        kl_loss(out, None, ref)


def confident(n_classes=10):
    """A linear model that classifies every point of `points()` as its label with a wide margin."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, n_classes))
    with torch.no_grad():
        model[1].weight.mul_(0.01)
        model[1].bias.copy_(torch.linspace(5, 0, n_classes))
    return model


def points(n=3):
    return torch.rand(n, 3, 2, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize('n_target_classes, ranks', [(1, 1), (3, 3), (9, 9), (20, 9)])
def test_apgd_t_attacks_each_target_rank_once_with_its_options(n_target_classes, ranks):
    x, y = points()
    model = CountingModel(confident())
    one = CountingModel(confident())
    apgd(one, x, y, 'linf', 1e-4, 3, loss='dlr-targeted', y_target=torch.ones(3, dtype=torch.long),
         random_start=True, l1_sparsity=0.2, keep='misclassified')
    per_rank = one.n_forward
    _, correct = apgd_targeted(model, x, y, 'linf', 1e-4, n_iter=3, n_target_classes=n_target_classes)
    assert correct.all()                                          # robust: every rank is tried
    assert model.n_forward == 1 + ranks * per_rank                # one ranking forward, then one APGD run per rank


def test_apgd_t_defaults_are_autoattacks_budget():
    x, y = points(1)
    model, one = CountingModel(confident(12)), CountingModel(confident(12))   # 12 classes: 9 targets, not 11
    apgd(one, x, y, 'linf', 1e-4, 100, loss='dlr-targeted', y_target=torch.ones(1, dtype=torch.long),
         random_start=True, l1_sparsity=0.2, keep='misclassified')
    apgd_targeted(model, x, y, 'linf', 1e-4)
    assert model.n_forward == 1 + 9 * one.n_forward               # 100 iterations, 9 target classes


def test_apgd_t_stops_when_nothing_is_left_to_attack():
    x, y = points(2)
    y[:] = 3                                                      # misclassified clean: nothing to attack
    model = CountingModel(confident())
    x_adv, correct = apgd_targeted(model, x, y, 'linf', 1e-4, n_iter=3)
    assert model.n_forward == 1 and not correct.any() and torch.equal(x_adv, x)


def test_apgd_t_checks_its_arguments_and_runs_in_eval_mode():
    x, y = points(1)
    with pytest.raises(ValueError, match='^n_target_classes must be >= 1, got 0'):
        apgd_targeted(confident(), x, y, 'linf', 1e-4, n_target_classes=0)
    with pytest.raises(ValueError, match="^loss 'dlr-targeted' needs at least 4 classes, the model has 3"):
        apgd_targeted(confident(3), x, y, 'linf', 1e-4, n_iter=2)
    apgd_targeted(confident(4), x, y, 'linf', 1e-4, n_iter=2)      # 4 classes are enough
    model = confident().train()
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    apgd_targeted(model, x, y, 'linf', 1e-4, n_iter=2)
    assert seen and not any(seen) and model.training
    with pytest.raises(ValueError, match=r'^inputs must lie in \[0,1\] pixel space'):
        apgd_targeted(confident(), x + 1, y, 'linf', 1e-4, n_iter=2)
    with pytest.raises(ValueError, match="^loss 'kl' needs random_start=True: its gradient is zero at the clean point"):
        apgd_targeted(confident(), x, y, 'linf', 1e-4, n_iter=2, loss='kl', random_start=False)


def apgd_t_one_target(model, x, y, norm, eps, n_iter, **options):
    """APGD-T with one target class, from `apgd`: towards the second most likely clean class, on the
    examples classified correctly; x itself where the example is misclassified clean or robust."""
    with torch.no_grad():
        logits = model(x)
    idx = (logits.argmax(1) == y).nonzero()[:, 0]
    target = logits.argsort(1, descending=True)[idx, 1]
    options = {**EVALUATION, 'loss': 'dlr-targeted', **options, 'n_iter': n_iter, 'keep': 'misclassified'}
    x_r, c_r = apgd(model, x[idx], y[idx], norm, eps, y_target=target, **options)
    x_adv, correct = x.clone(), torch.zeros(len(y), dtype=torch.bool)
    x_adv[idx] = torch.where(c_r[:, None, None, None], x[idx], x_r)
    correct[idx] = c_r
    return x_adv, correct


@pytest.mark.parametrize('options', [{'seed': 0}, {'random_start': False}, {'loss': 'kl', 'seed': 0},
                                     {'loss': 'ce-targeted', 'seed': 0}])
def test_apgd_t_is_apgd_towards_the_next_class_on_the_robust_examples(batch, options):
    """With APGD's options, random_start=False and other losses included ('kl': away from the clean
    output, the same for every target class)."""
    x, _ = batch
    model = TinyNet().eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10                                       # misclassified clean: left alone
    x_adv, correct = apgd_targeted(model, x, y, 'linf', 0.05, n_iter=4, n_target_classes=1, **options)
    expected, expected_correct = apgd_t_one_target(model, x, y, 'linf', 0.05, 4, **options)
    assert torch.equal(x_adv, expected) and torch.equal(correct, expected_correct)
    assert correct[2:].any() and not correct.all() and not correct[:2].any()


def test_apgd_t_reads_from_the_device_once_per_target_class_and_call():
    """The batch's checks (the labels' too) in one read, which examples are still robust before each
    target class, and the zero-gradient count once at the end."""
    x, y = points()
    with count_host_syncs() as syncs:
        _, correct = apgd_targeted(confident(), x, y, 'linf', 1e-4, n_iter=2, n_target_classes=2)
    assert correct.all()
    assert syncs.by_kind() == {'tolist': 1, 'nonzero': 2, '__int__': 1}


def test_apgd_t_on_an_empty_batch_returns_empty_flags():
    x, y = torch.rand(0, 3, 2, 2), torch.zeros(0, dtype=torch.long)
    x_adv, correct = apgd_targeted(confident(), x, y, 'linf', 1e-4, n_iter=2)
    assert x_adv.shape == x.shape and correct.shape == (0,) and correct.dtype == torch.bool


@pytest.mark.parametrize('norm, eps', [('linf', 0.03), ('l2', 0.3)])
def test_apgd_iterates_follow_the_momentum_update(tiny_net, batch, norm, eps):
    """The first iterates of APGD (before its first step-size checkpoint, at 22% of 100 iterations)
    recomputed here: x1 = P(x0 + eta s(g0)), then z = P(x_k + eta s(g_k)) and
    x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1})), eta = 2 eps, s the steepest direction."""
    from eatai.attacks import make_ball
    x, y = batch
    model = InputRecorder(tiny_net.eval())
    apgd(model, x, y, norm, eps, n_iter=100)
    ball, eta = make_ball(norm, eps), 2 * eps

    def grad_at(p):
        p = p.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(tiny_net(p), y, reduction='sum')
        return torch.autograd.grad(loss, p)[0]

    def step(p):
        g = grad_at(p)
        s = g.sign() if norm == 'linf' else g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return ball.project(x, p + eta * s)

    iterates = [x, step(x)]
    for _ in range(4):
        cur, prev = iterates[-1], iterates[-2]
        z = step(cur)
        iterates.append(ball.project(x, cur + 0.75 * (z - cur) + 0.25 * (cur - prev)))
    for k, expected in enumerate(iterates):
        assert torch.allclose(model.inputs[k], expected, atol=1e-5), f"iterate {k}"
