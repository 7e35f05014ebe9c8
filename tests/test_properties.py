"""Property-based tests (hypothesis) of the attacks' invariants over random shapes, radii and inputs."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from eatai.attacks import apgd, l1_box_projection, lp_norm, make_ball
from eatai.geometry import hull_radius, union_radius

# derandomize: CI runs the same examples every time (300 random examples per test passed locally)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
NORMS = ('linf', 'l2', 'l1')


@st.composite
def images(draw, max_batch=4, max_side=6):
    """(x, seed): a batch of images in [0,1] of random shape, some pixels exactly on the box faces."""
    b, c = draw(st.integers(1, max_batch)), draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    saturated = torch.rand(x.shape, generator=g, dtype=torch.float64) < draw(st.floats(0, 0.5))
    x = torch.where(saturated, x.round(), x)   # pixels at 0 or 1: the box binds there
    return x, seed


def radius(norm, fraction):
    """A radius from tiny to larger than the box allows, per norm."""
    return {'linf': 1.0, 'l2': 4.0, 'l1': 40.0}[norm] * fraction


@SETTINGS
@given(images(), st.floats(1e-3, 1.0), st.floats(1e-3, 30.0))
def test_l1_projection_is_feasible_idempotent_and_nonexpansive(data, eps, scale):
    x, seed = data
    g = torch.Generator().manual_seed(seed + 1)
    eps = eps * x[0].numel()   # from far inside to beyond what the box allows
    a = scale * torch.randn(x.shape, generator=g, dtype=torch.float64)
    b = scale * torch.randn(x.shape, generator=g, dtype=torch.float64)
    pa, pb = l1_box_projection(x, a, eps), l1_box_projection(x, b, eps)
    assert bool((lp_norm(pa, 'l1') <= eps * (1 + 1e-9)).all())
    assert bool(((x + pa) >= -1e-12).all() and ((x + pa) <= 1 + 1e-12).all())
    torch.testing.assert_close(l1_box_projection(x, pa, eps), pa, rtol=0, atol=1e-10)
    # a Euclidean projection onto a convex set is 1-Lipschitz, example by example
    assert bool((lp_norm(pa - pb, 'l2') <= lp_norm(a - b, 'l2') * (1 + 1e-9) + 1e-12).all())


@SETTINGS
@given(images(), st.floats(1e-3, 0.5), st.floats(0.1, 10.0))
def test_l1_projection_satisfies_the_variational_inequality(data, eps_fraction, scale):
    """p = P(z) iff <z - p, w - p> <= 0 for every feasible w: checked against feasible points."""
    x, seed = data
    g = torch.Generator().manual_seed(seed + 2)
    eps = eps_fraction * x[0].numel()
    z = scale * torch.randn(x.shape, generator=g, dtype=torch.float64)
    p = l1_box_projection(x, z, eps)
    for _ in range(8):
        w = l1_box_projection(x, scale * torch.randn(x.shape, generator=g, dtype=torch.float64), eps)
        inner = ((z - p) * (w - p)).reshape(len(x), -1).sum(dim=1)
        assert bool((inner <= 1e-9 * (1 + scale ** 2)).all()), inner


class Linear(nn.Module):
    """A random affine classifier: smooth enough that every attack has real work to do."""

    def __init__(self, d, n_classes, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(n_classes, d, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(n_classes, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


@SETTINGS
@given(images(), st.sampled_from(NORMS), st.floats(1e-3, 1.0), st.integers(1, 6), st.integers(2, 5))
def test_apgd_stays_in_ball_and_box_and_flags_are_honest(data, norm, fraction, n_iter, n_classes):
    x, seed = data
    model = Linear(x[0].numel(), n_classes, seed).eval()
    y = torch.randint(0, n_classes, (len(x),), generator=torch.Generator().manual_seed(seed + 3))
    x_before = x.clone()
    eps = radius(norm, fraction)
    x_adv, correct, loss = apgd(model, x, y, norm, eps, n_iter=n_iter, return_loss=True)
    assert torch.equal(x, x_before)
    assert x_adv.shape == x.shape and correct.shape == (len(x),) and correct.dtype == torch.bool
    assert bool(make_ball(norm, eps).contains(x, x_adv).all())
    with torch.no_grad():
        logits_adv, logits_clean = model(x_adv), model(x)
    # correct at every iterate implies correct at the returned one and at the clean start
    assert bool((logits_adv.argmax(1) == y)[correct].all())
    assert bool((logits_clean.argmax(1) == y)[correct].all())
    # the returned point is the highest-loss iterate: at least the clean loss, and its loss is the reported one
    ce = nn.functional.cross_entropy
    assert bool((loss >= ce(logits_clean, y, reduction='none') - 1e-9).all())
    torch.testing.assert_close(loss, ce(logits_adv, y, reduction='none'))


@SETTINGS
@given(images(max_batch=3, max_side=4), st.sampled_from(NORMS), st.floats(1e-3, 1.0))
def test_apgd_with_random_start_is_deterministic_for_a_seed(data, norm, fraction):
    x, seed = data
    model = Linear(x[0].numel(), 3, seed).eval()
    y = torch.zeros(len(x), dtype=torch.long)
    eps = radius(norm, fraction)
    runs = [apgd(model, x, y, norm, eps, n_iter=3, random_start=True, seed=seed) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@SETTINGS
@given(images(), st.sampled_from(NORMS))
def test_steepest_ascent_direction_has_unit_dual_length_and_ascends(data, norm):
    x, seed = data
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 4), dtype=torch.float64)
    ball = make_ball(norm, radius(norm, 0.5))
    sparsity = torch.full((len(x),), 0.3, dtype=torch.float64)
    d = ball.direction(grad, sparsity)
    # a step of length 1 in its own norm, and an ascent direction
    torch.testing.assert_close(lp_norm(d, norm).double(), torch.ones(len(x), dtype=torch.float64))
    assert bool(((grad * d).reshape(len(x), -1).sum(dim=1) > 0).all())


@SETTINGS
@given(st.integers(2, 4000), st.floats(1e-3, 1.0), st.floats(0.01, 0.99))
def test_hull_radius_lies_between_union_radius_and_the_l1_radius(d, eps_inf, position):
    """Prop. 3.1 and Thm. 3.1 against bounds from set inclusions alone: union <= hull; both balls lie in the
    hull; the hull lies in B_inf(eps1) and in B_1(d eps_inf), whose inscribed l2 radii are eps1 and sqrt(d) eps_inf."""
    eps1 = eps_inf * (1 + position * (d - 1))   # strictly inside (eps_inf, d * eps_inf)
    if not eps_inf < eps1 < d * eps_inf:
        return
    r_union, r_hull = union_radius(eps1, eps_inf, d), hull_radius(eps1, eps_inf, d)
    assert r_union <= r_hull * (1 + 1e-9)
    assert r_hull >= max(eps_inf, eps1 / math.sqrt(d)) * (1 - 1e-9)
    assert r_hull <= min(eps1, math.sqrt(d) * eps_inf) * (1 + 1e-9)


@pytest.mark.parametrize('norm', NORMS)
def test_apgd_with_pixels_on_the_box_faces(norm):
    """A fixed case of what the strategy draws at random: pixels at 0 and 1, where the box binds."""
    x = torch.tensor([[[[0.0, 1.0], [0.3, 1.0]]]], dtype=torch.float64)
    eps = radius(norm, 0.9)
    x_adv, _ = apgd(Linear(4, 3, 0).eval(), x, torch.tensor([0]), norm, eps, n_iter=3)
    assert bool(make_ball(norm, eps).contains(x, x_adv).all())
