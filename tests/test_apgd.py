"""APGD: invariants, budget, exactness on linear models, agreement with AutoAttack, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CountingModel
from torch import nn

from eatai.attacks import EVALUATION, apgd, apgd_targeted, make_ball
from eatai.threats import NORMS

EPS = {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0}
devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('norm', NORMS)
def test_output_in_ball_and_box_input_untouched(norm, device, tiny_net, batch):
    model, (x, y) = tiny_net.to(device), (t.to(device) for t in batch)
    x0 = x.clone()
    x_adv, correct = apgd(model, x, y, norm, EPS[norm])
    assert torch.equal(x, x0)
    assert x_adv.shape == x.shape and correct.shape == y.shape and correct.dtype == torch.bool
    assert make_ball(norm, EPS[norm]).contains(x, x_adv).all()


@pytest.mark.parametrize('norm', NORMS)
def test_modes_restored_and_parameter_grads_untouched(norm, tiny_net, batch):
    x, y = batch
    tiny_net.train()
    tiny_net.dropout.eval()                      # a mixed state must come back as it was
    tiny_net.head.weight.grad = torch.full_like(tiny_net.head.weight, 3.0)
    bn = tiny_net.features[1]
    stats = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    flags = [m.training for m in tiny_net.modules()]
    apgd(tiny_net, x, y, norm, EPS[norm])
    assert [m.training for m in tiny_net.modules()] == flags
    assert torch.equal(tiny_net.head.weight.grad, torch.full_like(tiny_net.head.weight, 3.0))
    assert all(p.grad is None for n, p in tiny_net.named_parameters() if n != 'head.weight')
    # eval mode during the attack: BatchNorm statistics did not move
    assert all(torch.equal(a, b) for a, b in zip(stats, (bn.running_mean, bn.running_var, bn.num_batches_tracked)))


def test_modes_restored_when_the_attack_fails(tiny_net):
    tiny_net.train()
    with pytest.raises(ValueError):
        apgd(tiny_net, torch.rand(2, 3, 8, 8), torch.tensor([0, 99]), 'linf', 0.1)  # label out of range
    assert all(m.training for m in tiny_net.modules())


@pytest.mark.parametrize('norm', NORMS)
def test_loss_not_lower_than_clean_and_flags_consistent(norm, tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    x_adv, correct = apgd(tiny_net, x, y, norm, EPS[norm])
    with torch.no_grad():
        clean, adv = tiny_net(x), tiny_net(x_adv)
    assert torch.all(F.cross_entropy(adv, y, reduction='none') >= F.cross_entropy(clean, y, reduction='none') - 1e-6)
    # correct at every iterate => correct at the returned iterate and at the clean point
    assert torch.all(adv.argmax(1)[correct] == y[correct])
    assert torch.all(clean.argmax(1)[correct] == y[correct])
    assert not torch.any(correct & (adv.argmax(1) != y))


@pytest.mark.parametrize('norm', NORMS)
def test_budget_is_n_iter_plus_one_forward_passes(norm, tiny_net, batch):
    x, y = batch
    counting = CountingModel(tiny_net)
    apgd(counting, x, y, norm, EPS[norm], n_iter=7)
    assert counting.n_forward == 8


@pytest.mark.parametrize('norm', NORMS)
def test_deterministic_for_fixed_seed(norm, tiny_net, batch):
    x, y = batch
    runs = [apgd(tiny_net, x, y, norm, EPS[norm], random_start=True, seed=3) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    other = apgd(tiny_net, x, y, norm, EPS[norm], random_start=True, seed=4)[0]
    assert not torch.equal(runs[0][0], other)


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('shape', [(1, 3, 32, 32), (2, 1, 7, 5), (3, 12)])
def test_any_shape_and_batch_size_one(norm, shape):
    torch.manual_seed(0)
    d = int(np.prod(shape[1:]))
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 4))
    x, y = torch.rand(shape), torch.randint(0, 4, (shape[0],))
    eps = min(EPS[norm], d * 0.05) if norm == 'l1' else EPS[norm]
    x_adv, correct = apgd(model, x, y, norm, eps)
    assert x_adv.shape == x.shape and make_ball(norm, eps).contains(x, x_adv).all()


def test_runs_under_no_grad_and_empty_batch(tiny_net, batch):
    x, y = batch
    with torch.no_grad():
        x_adv, _ = apgd(tiny_net, x, y, 'linf', 8 / 255)
    assert (x_adv != x).any()
    x_e, c_e = apgd(tiny_net, x[:0], y[:0], 'l1', 12.0)
    assert x_e.shape[0] == 0 and c_e.shape == (0,)


def test_attack_beats_random_noise(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    with torch.no_grad():
        y = tiny_net(x).argmax(1)     # all clean-correct
    for norm in NORMS:
        ball = make_ball(norm, EPS[norm] / 4)
        x_adv, _ = apgd(tiny_net, x, y, norm, ball.eps)
        x_rand = ball.random_start(x)
        with torch.no_grad():
            l_adv = F.cross_entropy(tiny_net(x_adv), y, reduction='none')
            l_rand = F.cross_entropy(tiny_net(x_rand), y, reduction='none')
        assert torch.all(l_adv >= l_rand)


# --- exactness on binary linear classifiers, where the worst case is a linear program ----------

def worst_margin(w, x, margin, norm, eps):
    """Smallest margin (w . delta added) over the ball and the box, by hand. w, x: (d,) float64."""
    room = np.where(w > 0, x, 1 - x)    # how far each coordinate can move against w
    a = np.abs(w)
    if norm == 'linf':
        return margin - (a * np.minimum(room, eps)).sum()
    if norm == 'l1':  # greedy: the budget goes to the largest |w_i| first, up to the box
        order, left, drop = np.argsort(-a), eps, 0.0
        for i in order:
            step = min(room[i], left)
            drop, left = drop + a[i] * step, left - step
            if left <= 0:
                break
        return margin - drop
    lo, hi = 0.0, 1e6     # l2: delta_i = min(t |w_i|, room_i), t such that ||delta||_2 = eps
    if np.linalg.norm(room) <= eps:
        return margin - (a * room).sum()
    for _ in range(200):
        t = (lo + hi) / 2
        lo, hi = (t, hi) if np.linalg.norm(np.minimum(t * a, room)) < eps else (lo, t)
    return margin - (a * np.minimum(hi * a, room)).sum()


class Binary(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x):
        m = x.flatten(1) @ self.w.to(x.dtype) + self.b.to(x.dtype)
        return torch.stack([-m / 2, m / 2], dim=1)


def linear_problem(norm, eps, dtype=torch.float64):
    """A binary linear classifier on 3x4x4 inputs, its labels and the exact worst-case margins."""
    g = torch.Generator().manual_seed(0)
    d, n = 48, 200
    w = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64)
    b = -(x.flatten(1) @ w).median()
    m = x.flatten(1) @ w + b
    y = (m > 0).long()
    sign = torch.where(y == 1, 1.0, -1.0).double()
    exact = np.array([worst_margin((sign[i] * w).numpy(), x[i].flatten().numpy(), float(sign[i] * m[i]), norm, eps)
                      for i in range(n)])
    assert 0.2 < (exact > 0).mean() < 0.8          # a regime where the attack decides
    model = Binary(w.to(dtype), b.reshape(()).to(dtype))

    def margin(x_adv):
        with torch.no_grad():
            return (sign * (x_adv.double().flatten(1) @ w + b)).numpy()
    return model, x.to(dtype), y, exact, margin


@pytest.mark.parametrize('norm, eps, budget', [('linf', 0.02, {}), ('linf', 0.02, EVALUATION),
                                               ('l2', 0.3, {}), ('l2', 0.3, EVALUATION)])
def test_exact_on_linear_classifier(norm, eps, budget):
    model, x, y, exact, margin = linear_problem(norm, eps)
    x_adv, correct = apgd(model, x, y, norm, eps, **{k: v for k, v in budget.items() if k != 'keep'})
    decided = np.abs(exact) > 1e-2 * np.abs(exact).max()   # leave out points on the boundary
    assert decided.sum() > len(y) * 0.8
    assert np.array_equal(correct.numpy()[decided], exact[decided] > 0)
    found = margin(x_adv)
    assert np.all(found >= exact - 1e-6)                   # nothing beats the LP optimum
    assert np.allclose(found, exact, atol=2e-2 * np.abs(exact).max())


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('budget', [{}, EVALUATION])
def test_l1_near_optimal_on_linear_classifier(budget, dtype):
    """APGD-l1's sparse sign steps do not reach the LP optimum exactly (AutoAttack's do not
    either); ours must come at least as close as AutoAttack's, in float32 and float64 alike."""
    from pyautoattack.autopgd_base import APGDAttack
    eps = 0.5
    model, x, y, exact, margin = linear_problem('l1', eps, dtype)
    options = {k: v for k, v in budget.items() if k != 'keep'}
    x_adv, correct = apgd(model, x, y, 'l1', eps, seed=0, **options)
    found = margin(x_adv)
    assert np.all(found >= exact - 1e-6)
    reference = APGDAttack(model.float(), n_iter=100, norm='L1', eps=eps, seed=0, device='cpu')
    reference.init_hyperparam(x.float())
    torch.manual_seed(0)
    x_ref = reference.attack_single_run(x.float(), y)[0]
    gap, gap_ref = (found - exact).mean(), (margin(x_ref) - exact).mean()
    assert gap <= gap_ref * 1.05
    assert (correct.numpy() != (exact > 0)).mean() <= 0.06


# --- agreement with AutoAttack's APGD at the evaluation budget --------------------------------

@pytest.fixture(scope='module')
def softmax_regression():
    g = torch.Generator().manual_seed(2)
    d, n = 3 * 8 * 8, 128
    w = torch.randn(d, 10, generator=g) * 0.5
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 10))
    with torch.no_grad():
        model[1].weight.copy_(w.T)
        model[1].bias.zero_()
    x = torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.eval(), x, y


@pytest.mark.parametrize('norm, eps', [('linf', 0.6 / 255), ('l2', 0.06), ('l1', 0.4)])
def test_agrees_with_autoattack_apgd(norm, eps, softmax_regression):
    from pyautoattack.autopgd_base import APGDAttack
    model, x, y = softmax_regression
    ours = apgd(model, x, y, norm, eps, **EVALUATION)[1].float().mean().item()
    attack = APGDAttack(model, n_iter=100, norm={'linf': 'Linf', 'l2': 'L2', 'l1': 'L1'}[norm], eps=eps, seed=0,
                        loss='ce', n_restarts=1, device='cpu')
    with torch.no_grad():
        theirs = (model(attack.perturb(x.contiguous(), y)).argmax(1) == y).float().mean().item()
    assert 0.1 < theirs < 0.95                # a regime where the attack matters
    assert abs(ours - theirs) <= 0.04


def test_targeted_finds_what_untargeted_finds(softmax_regression):
    model, x, y = softmax_regression
    x_t, correct_t = apgd_targeted(model, x, y, 'linf', 0.6 / 255, n_iter=50, n_target_classes=3, seed=0)
    with torch.no_grad():
        pred = model(x_t).argmax(1)
    assert torch.equal(correct_t, pred == y)
    assert torch.equal(x_t[correct_t], x[correct_t])          # robust points come back clean
    assert make_ball('linf', 0.6 / 255).contains(x, x_t).all()
    ce = apgd(model, x, y, 'linf', 0.6 / 255, **EVALUATION)[1]
    assert correct_t.float().mean() <= ce.float().mean() + 0.05


def test_dlr_losses_run(softmax_regression):
    model, x, y = softmax_regression
    x_adv, correct = apgd(model, x, y, 'l2', 0.06, loss='dlr')
    assert correct.float().mean() < 1.0
    target = (y + 1) % 10
    x_t, _ = apgd(model, x, y, 'l1', 0.4, loss='dlr-targeted', y_target=target)
    assert make_ball('l1', 0.4).contains(x, x_t).all()


# --- step-size schedules ----------------------------------------------------------------------

def test_apgd_checkpoints_follow_the_paper():
    """For N = 100 the checkpoints are 22, 41, 57, 70, 80, 87, 93, 99 (Croce & Hein 2020)."""
    from eatai.attacks.schedules import AttackState, OscillationSchedule
    sched = OscillationSchedule(100)
    z = torch.zeros(1)
    state = AttackState(x_adv=z, grad=z, loss=z, x_best=z, grad_best=z, loss_best=z, step_size=torch.ones(1))
    sched.start(z, state, 1.0)
    checkpoints, halvings = [], 0
    for i in range(1, 101):
        state.loss = torch.full((1,), -float(i))   # the loss never rises: every checkpoint halves
        before = state.step_size.clone()
        sched.update(state)
        if sched.since_check == 0:
            checkpoints.append(i)
            halvings += int(state.step_size.item() == before.item() / 2)
    assert checkpoints[:8] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert halvings == len(checkpoints)


def test_oscillation_rule_keeps_step_when_loss_keeps_rising():
    from eatai.attacks.schedules import AttackState, OscillationSchedule
    sched = OscillationSchedule(10)   # period 2
    z = torch.zeros(2)
    state = AttackState(x_adv=z, grad=z, loss=z, x_best=z, grad_best=z, loss_best=z, step_size=torch.ones(2))
    sched.start(z, state, 1.0)
    for i in (1, 2):
        state.loss = torch.tensor([float(i), 0.0])   # example 0 rises every step, example 1 is flat
        state.loss_best = torch.maximum(state.loss_best, state.loss)
        sched.update(state)
    assert state.step_size.tolist() == [1.0, 0.5]


def test_l1_sparsity_follows_best_point():
    from eatai.attacks.schedules import AttackState, SparsitySchedule
    x = torch.zeros(1, 100)
    best = x.clone()
    best[0, :30] = 0.1
    sched = SparsitySchedule(10, init_sparsity=0.05)
    state = AttackState(x_adv=x, grad=x, loss=torch.zeros(1), x_best=best, grad_best=x, loss_best=torch.zeros(1),
                        step_size=torch.full((1, 1), 2.0))
    sched.start(x, state, 2.0)
    assert state.sparsity.item() == pytest.approx(0.05)
    sched.update(state)   # period 1 for 10 iterations
    assert state.sparsity.item() == pytest.approx(0.3 / 1.5)
    assert state.step_size.item() == 2.0                 # 30 < 0.95 * 100 nonzeros: reset to eps
    assert torch.equal(state.x_adv, best)
    sched.update(state)                                  # unchanged sparsity: step shrinks by 1.5
    assert state.step_size.item() == pytest.approx(2.0 / 1.5)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, err, match', [
    (dict(norm='l3'), ValueError, 'l3'),
    (dict(eps=0.0), ValueError, 'eps'),
    (dict(eps=float('nan')), ValueError, 'eps'),
    (dict(eps=-1.0), ValueError, 'eps'),
    (dict(n_iter=0), ValueError, 'n_iter'),
    (dict(bogus=1), TypeError, 'bogus'),
    (dict(n_restarts=3), ValueError, 'random_start'),
    (dict(loss='hinge'), ValueError, 'hinge'),
    (dict(loss='dlr-targeted'), ValueError, 'y_target'),
    (dict(keep='best'), ValueError, 'keep'),
])
def test_bad_options(kwargs, err, match, tiny_net, batch):
    x, y = batch
    args = dict(norm='linf', eps=0.03)
    args.update(kwargs)
    norm, eps = args.pop('norm'), args.pop('eps')
    with pytest.raises(err, match=match):
        apgd(tiny_net, x, y, norm, eps, **args)


def test_bad_data(tiny_net, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r'\[0,1\]'):
        apgd(tiny_net, (x - 0.5) / 0.25, y, 'linf', 0.03)          # normalised data
    with pytest.raises(ValueError, match='255'):
        apgd(tiny_net, (x * 255).to(torch.uint8), y, 'linf', 0.03)
    with pytest.raises(ValueError, match='shape'):
        apgd(tiny_net, x, y[:3], 'linf', 0.03)
    with pytest.raises(ValueError, match='out of range'):
        apgd(tiny_net, x, y + 10, 'linf', 0.03)
    with pytest.raises(ValueError, match='NaN'):
        apgd(tiny_net, x.masked_fill(x > 0.9, float('nan')), y, 'linf', 0.03)
    with pytest.raises(ValueError, match='integer'):
        apgd(tiny_net, x, y.float(), 'linf', 0.03)
