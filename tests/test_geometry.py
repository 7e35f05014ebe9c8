"""Section 3 radii, checked against independent computations rather than the printed figures."""
import math

import numpy as np
import pytest
from scipy.optimize import linprog

from eatai.geometry import hull_covers, hull_radius, input_dim, union_radius

CIFAR = dict(eps1=12.0, eps_inf=8 / 255, d=3072)
IMAGENET = dict(eps1=255.0, eps_inf=4 / 255, d=3 * 224 * 224)


def test_cifar_union_radius_from_the_closest_point():
    # the closest point outside both balls: one coordinate at eps_inf, the rest of the l1
    # budget spread evenly over the other d-1 coordinates
    e1, einf, d = CIFAR['eps1'], CIFAR['eps_inf'], CIFAR['d']
    point = np.full(d, (e1 - einf) / (d - 1))
    point[0] = einf
    assert np.abs(point).max() == pytest.approx(einf) and np.abs(point).sum() == pytest.approx(e1)
    assert union_radius(**CIFAR) == pytest.approx(np.linalg.norm(point), rel=1e-12)
    assert union_radius(**CIFAR) == pytest.approx(0.21824, abs=1e-5)
    # the paper's 0.2188 is the upper bound of its eq. (2), not the value of eq. (1)
    bound = math.sqrt(einf ** 2 + e1 ** 2 / (d - 1))
    assert bound == pytest.approx(0.2188, abs=1e-4) and union_radius(**CIFAR) < bound


def test_cifar_hull_radius_is_0_6138_not_the_printed_0_6178():
    assert hull_radius(**CIFAR) == pytest.approx(12 / math.sqrt(382.25), rel=1e-12)
    assert hull_radius(**CIFAR) == pytest.approx(0.61377, abs=1e-5)
    assert abs(hull_radius(**CIFAR) - 0.6178) > 3e-3


def test_imagenet_hull_radius_is_almost_exactly_2():
    assert hull_radius(**IMAGENET) == pytest.approx(2.0, abs=1e-4)


def test_decision_rule():
    assert hull_covers(0.5, **CIFAR)            # E-AT covers CIFAR-10's l2 threat model
    assert not hull_covers(0.62, **CIFAR)
    assert union_radius(**CIFAR) < 0.5          # the union alone would not
    assert hull_covers(2.0 - 1e-6, **IMAGENET)
    with pytest.raises(ValueError):
        hull_covers(-1, **CIFAR)


def test_limits_in_p():
    assert hull_radius(p=1, **CIFAR) == pytest.approx(12)
    assert hull_radius(p=math.inf, **CIFAR) == pytest.approx(8 / 255)
    assert hull_radius(p=1 + 1e-9, **CIFAR) == pytest.approx(12, rel=1e-4)
    assert union_radius(p=1, **CIFAR) == pytest.approx(12)
    assert union_radius(p=math.inf, **CIFAR) == pytest.approx(8 / 255)


@pytest.mark.parametrize('p', [1.5, 2, 3, 7])
def test_hull_contains_union_ball(p):
    for e1, einf, d in [(12, 8 / 255, 3072), (2.5, 1.0, 3), (1.3, 1.0, 2), (3.9, 1.0, 4)]:
        assert hull_radius(e1, einf, d, p) >= union_radius(e1, einf, d, p) - 1e-12


def _hull_gauge(u, e1, einf):
    """Gauge of conv(B_1(e1) U B_inf(einf)) at u: min over u = a + b of |a|_1/e1 + |b|_inf/einf (an LP)."""
    d = len(u)
    # variables: a (d), s (d) >= |a|, t >= |u - a|_inf
    c = np.concatenate([np.zeros(d), np.ones(d) / e1, [1 / einf]])
    eye, zero = np.eye(d), np.zeros((d, d))
    rows = [np.hstack([eye, -eye, np.zeros((d, 1))]), np.hstack([-eye, -eye, np.zeros((d, 1))]),
            np.hstack([-eye, zero, -np.ones((d, 1))]), np.hstack([eye, zero, -np.ones((d, 1))])]
    rhs = np.concatenate([np.zeros(d), np.zeros(d), -u, u])
    res = linprog(c, A_ub=np.vstack(rows), b_ub=rhs, bounds=[(None, None)] * d + [(0, None)] * (d + 1))
    assert res.success
    return res.fun


@pytest.mark.parametrize('e1, einf, d, p', [(2.5, 1.0, 3, 2), (1.7, 1.0, 2, 2), (3.2, 1.0, 4, 3), (2.2, 0.5, 5, 1.5)])
def test_hull_radius_matches_sampled_gauge(e1, einf, d, p):
    """min over directions u of |u|_p / gauge(u) is the inner l_p radius of the hull."""
    rng = np.random.default_rng(0)
    dirs = np.abs(rng.normal(size=(400, d)))
    # add the sparse-ish directions where the minimum sits: k ones and a fraction
    k, alpha = int(e1 / einf), e1 / einf - int(e1 / einf)
    w = np.zeros(d)
    w[:k], w[k:k + 1] = 1, alpha
    dual = np.abs(w) ** (1 / (p - 1))  # the touching point is the dual direction of w
    dirs = np.vstack([dirs, dual])
    radii = [np.linalg.norm(u, p) / _hull_gauge(u, e1, einf) for u in dirs]
    r = hull_radius(e1, einf, d, p)
    assert min(radii) >= r * (1 - 1e-6)          # no direction leaves the hull before r
    assert min(radii) == pytest.approx(r, rel=1e-6)  # and the theorem's direction touches it


@pytest.mark.parametrize('e1, einf, d, p', [(2.5, 1.0, 3, 2), (1.7, 1.0, 2, 2), (3.2, 1.0, 4, 3)])
def test_union_radius_matches_sampling(e1, einf, d, p):
    """Scale random directions until they leave both balls; the smallest l_p norm is the radius."""
    rng = np.random.default_rng(1)
    dirs = np.abs(rng.normal(size=(200000, d)))
    t = np.maximum(einf / dirs.max(axis=1), e1 / dirs.sum(axis=1))
    sampled = (np.linalg.norm(dirs, p, axis=1) * t).min()
    r = union_radius(e1, einf, d, p)
    assert sampled >= r * (1 - 1e-9)
    assert sampled == pytest.approx(r, rel=2e-2)


@pytest.mark.parametrize('kwargs, match', [
    (dict(eps1=12, eps_inf=8 / 255, d=1), 'd >= 2'),
    (dict(eps1=0.01, eps_inf=8 / 255, d=3072), 'eps_inf < eps1'),
    (dict(eps1=100, eps_inf=8 / 255, d=3072), 'd\\*eps_inf'),
    (dict(eps1=math.nan, eps_inf=8 / 255, d=3072), 'eps1'),
    (dict(eps1=12, eps_inf=-1, d=3072), 'eps_inf'),
    (dict(eps1=12, eps_inf=8 / 255, d=3072, p=0.5), 'p must be'),
])
def test_outside_the_theorem_raises_with_reason(kwargs, match):
    for fn in (union_radius, hull_radius):
        with pytest.raises(ValueError, match=match):
            fn(**kwargs)


def test_input_dim():
    assert input_dim((3, 32, 32)) == 3072
