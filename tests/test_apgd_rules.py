"""APGD's rules checked where their outcome is known: the step-size schedule against a hand trace
of AutoAttack's rule, restarts against a single run, the targeted losses on a linear model."""
import pytest
import torch
from torch import nn

from eatai.attacks import apgd
from eatai.attacks.schedules import AttackState, OscillationSchedule, SparsitySchedule


def drive(schedule, losses):
    """Feed `schedule` a (T+1, B) loss trace as APGD's loop does (best loss = running max);
    returns the (T, B) step sizes after each update and the state."""
    losses = torch.as_tensor(losses, dtype=torch.float64)
    B = losses.shape[1]
    x = torch.arange(B, dtype=torch.float64)[:, None]
    state = AttackState(x_adv=x.clone(), grad=torch.zeros(B, 1), loss=losses[0], x_best=x.clone(),
                        grad_best=torch.zeros(B, 1), loss_best=losses[0].clone(), step_size=torch.ones(B, 1))
    schedule.start(x, state, 1.0)
    steps = []
    for t in range(1, len(losses)):
        state.loss = losses[t]
        state.loss_best = torch.maximum(state.loss_best, losses[t])
        schedule.update(state)
        steps.append(state.step_size[:, 0].clone())
    return torch.stack(steps), state


def test_checkpoints_follow_autoattack():
    """N = 100: checkpoints after 22 iterations, then 19, 16, 13, 10, 7 and 6 (0.22 N, -0.03 N, >= 0.06 N)."""
    flat = torch.zeros(100, 1)               # the loss never increases: every checkpoint halves
    steps, _ = drive(OscillationSchedule(100), flat)
    halved_at = [t + 1 for t in range(len(steps)) if t == 0 and steps[t] < 1 or t > 0 and steps[t] < steps[t - 1]]
    assert halved_at == [22, 41, 57, 70, 80, 87, 93, 99]
    assert steps[-1].item() == 0.5 ** 8


def _halvings(steps):
    return [t + 1 for t in range(len(steps)) if (steps[t] < 1 if t == 0 else steps[t] < steps[t - 1])]


@pytest.mark.parametrize('n_iter, expected', [
    (4, [1, 2, 3]),                                    # 0.22 N < 1: a checkpoint after every step
    (10, [2, 3, 4, 5, 6, 7, 8, 9]),                    # the training budget: 2, then every step
    (20, [4, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),   # 4, then 3, 2, then 1 (0.03 N, 0.06 N < 1)
])
def test_checkpoints_of_short_runs(n_iter, expected):
    steps, _ = drive(OscillationSchedule(n_iter), torch.zeros(n_iter, 1))
    assert _halvings(steps) == expected


def test_oscillation_counts_only_the_steps_since_the_last_checkpoint():
    """N = 20: checkpoints after 4 and 7 steps. Steps 5..7 rise twice in 3 (<= 0.75 * 3): halved; the
    rise from step 3 to 4 belongs to the first period and must not count again."""
    trace = torch.tensor([0., 1., 2., 3., 4., 5., 4.5, 6.])[:, None]
    steps, _ = drive(OscillationSchedule(20), trace)
    assert steps[:, 0].tolist() == [1., 1., 1., 1., 1., 1., 0.5]


def test_oscillation_threshold_is_inclusive():
    """N = 20: period 4, rho * period = 3. A loss that rose in exactly 3 of 4 steps is halved (AutoAttack's
    `<=`), one that rose in all 4 is not, one that rose in 2 is."""
    trace = torch.tensor([[0., 0., 0.],
                          [1., 1., 1.],
                          [2., 2., 2.],
                          [3., 3., 1.],     # third example: down
                          [2.5, 4., 1.5]])  # first example: down once -> 3 increases of 4
    steps, state = drive(OscillationSchedule(20, rho=0.75), trace)
    assert steps[-1].tolist() == [0.5, 1.0, 0.5]
    # halved examples restart from their best point (x_best was never moved here: x itself)
    assert state.x_adv[:, 0].tolist() == [0., 1., 2.]


def _stagnation_trace():
    """N = 100: first period 22 steps, second 19. Three examples whose loss rises at every step but one
    of the second period (18 of 19 > rho * 19 = 14.25: no oscillation):
    0: not halved at the first checkpoint, best loss unchanged in the second period -> halved (stagnation);
    1: as 0, but its best loss improves in the second period -> kept;
    2: halved at the first checkpoint (flat), then as 0, below its best -> kept: condition 2 needs an unchanged step size."""
    first = torch.arange(23, dtype=torch.float64)                    # 0..22, all increases, best 22
    below = 1 + torch.arange(19, dtype=torch.float64) * 0.1          # drop to 1, then 18 rises, below 22
    above = 1 + torch.arange(19, dtype=torch.float64) * 2            # drop, then rises past 22 (up to 37)
    t0 = torch.cat([first, below])
    t1 = torch.cat([first, above])
    t2 = torch.cat([torch.full((23,), 5.0, dtype=torch.float64), below])   # flat at 5, then below it
    return torch.stack([t0, t1, t2], dim=1)


def test_stagnation_halves_only_unreduced_examples_without_progress():
    steps, _ = drive(OscillationSchedule(100), _stagnation_trace())
    assert steps[21].tolist() == [1.0, 1.0, 0.5]        # first checkpoint: only the flat one
    assert steps[40].tolist() == [0.5, 1.0, 0.5]        # second checkpoint: the stagnating one


def test_l1_schedule_checks_every_period_and_floors_the_step():
    """APGD-l1 (N = 100): a checkpoint every 4 iterations (0.04 N); the step is reset to eps when the
    best point got sparser by more than 5% (strictly: AutoAttack's `< .95`), else divided by 1.5,
    never below eps / 10; the sparsity keeps the input's dtype."""
    d = 20
    x = torch.zeros(2, d, dtype=torch.float64)
    best = x.clone()
    best[0, :19] = 0.1     # 19 of 20 nonzero: exactly 95%, so not sparser
    best[1, :10] = 0.1     # 10 of 20: sparser
    state = AttackState(x_adv=x.clone(), grad=x.clone(), loss=torch.zeros(2, dtype=torch.float64), x_best=best,
                        grad_best=x.clone(), loss_best=torch.zeros(2, dtype=torch.float64),
                        step_size=torch.ones(2, 1, dtype=torch.float64))
    schedule = SparsitySchedule(100, init_sparsity=0.05)
    schedule.start(x, state, 1.0)
    for k in range(1, 41):
        schedule.update(state)
        checks = k // 4
        expected = [max(1.5 ** -checks, 0.1), max(1.5 ** -max(checks - 1, 0), 0.1)]
        assert state.step_size[:, 0].tolist() == pytest.approx(expected), k
    assert state.sparsity.dtype == torch.float64
    assert state.sparsity.tolist() == pytest.approx([19 / d / 1.5, 10 / d / 1.5])


# ---- restarts -------------------------------------------------------------------------------------------

class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 5))

    def forward(self, x):
        return self.net(x) * 3


@pytest.mark.parametrize('norm, eps', [('linf', 0.1), ('l2', 1.0)])
def test_restarts_never_lose_and_do_find_more(norm, eps):
    model = TinyMLP().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 3, 4, 4, generator=g), torch.randint(0, 5, (32,), generator=g)
    opts = dict(random_start=True, seed=3, return_loss=True)
    _, _, one = apgd(model, x, y, norm, eps, n_iter=3, **opts)
    x_adv, _, many = apgd(model, x, y, norm, eps, n_iter=3, n_restarts=4, **opts)
    assert (many >= one).all()                     # the first restart is the single run
    assert (many > one + 1e-4).sum() >= 3          # and the others find higher losses
    with torch.no_grad():                          # the returned loss is the one at the returned point
        ce = nn.functional.cross_entropy(model(x_adv), y, reduction='none')
    assert torch.allclose(ce, many, atol=1e-5)


# ---- targeted losses -------------------------------------------------------------------------------------

class GroupMeans(nn.Module):
    """Linear: logit k is 10 x the mean of pixel group k (4 groups of 12 of a 3x4x4 image)."""

    def forward(self, x):
        return x.flatten(1).view(x.shape[0], 4, 12).mean(dim=2) * 10


def _group_points():
    """Class 0's group at 0.8, class 1's at 0.45, class 2's at 0.3, class 3's at 0.2: class 1 is the
    runner-up, so an untargeted attack ends there; targets 2 and 3 are reached only if aimed at."""
    levels = torch.tensor([0.8, 0.45, 0.3, 0.2])
    x = levels.repeat_interleave(12).view(1, 3, 4, 4).repeat(3, 1, 1, 1)
    return x, torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3])


@pytest.mark.parametrize('norm, eps', [('linf', 0.35), ('l2', 0.35 * 48 ** 0.5)])
def test_targeted_attack_reaches_its_target(norm, eps):
    """Within linf 0.35 every target can overtake class 0 (0.8 - 0.35 < 0.2 + 0.35), and only by
    moving its own group up. -CE(target) is concave in x for a linear model, so APGD ends in the
    class it was given, not in the runner-up an untargeted attack goes to."""
    x, y, target = _group_points()
    model = GroupMeans()
    x_adv, correct = apgd(model, x, y, norm, eps, n_iter=20, loss='ce-targeted', y_target=target)
    assert model(x_adv).argmax(dim=1).tolist() == target.tolist()
    assert not correct.any()
    untargeted, _ = apgd(model, x, y, norm, eps, n_iter=20)
    assert model(untargeted).argmax(dim=1).tolist() == [1, 1, 1]   # the aim matters


def test_targeted_dlr_is_autoattacks():
    """The targeted DLR loss (eq. 7) equals AutoAttack's own on random logits and targets."""
    from pyautoattack.autopgd_base import APGDAttack_targeted
    from eatai.attacks.losses import dlr_targeted_loss
    g = torch.Generator().manual_seed(0)
    logits, y, t = torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g), \
        torch.randint(0, 10, (64,), generator=g)
    holder = type('Holder', (), {'y_target': t})()
    expected = APGDAttack_targeted.dlr_loss_targeted(holder, logits, y)
    assert torch.allclose(dlr_targeted_loss(logits, y, t), expected, atol=1e-6)
