"""The edges of Section 3's radii: the inequalities' boundaries and the messages of bad input
(what the mutation run of eatai/geometry.py found untested)."""
import math

import pytest

from eatai.geometry import hull_covers, hull_radius, union_radius

CIFAR = (12, 8 / 255, 3072)


@pytest.mark.parametrize('name', ['eps1', 'eps_inf'])
@pytest.mark.parametrize('bad', [0, -1.0, math.inf, math.nan, '12'])
def test_each_radius_is_checked_by_name(name, bad):
    args = {'eps1': 12, 'eps_inf': 8 / 255, 'd': 3072}
    args[name] = bad
    for f in (union_radius, hull_radius):
        with pytest.raises(ValueError, match=rf'^{name} must be a finite number > 0'):
            f(**args)


def test_nested_balls_are_refused_at_the_boundary():
    """eps1 == eps_inf (l1 ball inside the l-inf one) and eps1 == d * eps_inf (the reverse) are refused."""
    with pytest.raises(ValueError, match='eps_inf < eps1'):
        union_radius(0.25, 0.25, 4)
    with pytest.raises(ValueError, match=r'd\*eps_inf=1$'):
        hull_radius(1.0, 0.25, 4)
    assert hull_radius(0.9, 0.25, 4) > 0 and union_radius(0.3, 0.25, 4) > 0   # just inside both bounds


@pytest.mark.parametrize('bad', [0, -0.5, math.nan, '0.5'])
def test_hull_covers_refuses_bad_radii(bad):
    with pytest.raises(ValueError, match='^eps_p must be a number > 0'):
        hull_covers(bad, *CIFAR)


def test_hull_covers_is_inclusive_and_uses_p():
    r = hull_radius(*CIFAR)
    assert hull_covers(r, *CIFAR) and not hull_covers(r * (1 + 1e-9), *CIFAR)
    assert hull_covers(5.0, *CIFAR, p=1)          # the l1 hull radius is eps1 = 12
    assert not hull_covers(5.0, *CIFAR)           # the l2 one is 0.61
