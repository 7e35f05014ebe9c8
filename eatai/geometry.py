"""Geometry of the l1 and l-inf balls, Section 3 of Croce & Hein (2022).

All radii live in R^d (d = number of input dimensions, e.g. 3*32*32 = 3072 for CIFAR-10).
`p` may be any real number >= 1 or `math.inf`.
"""
from __future__ import annotations

import math

__all__ = ['union_radius', 'hull_radius', 'hull_covers', 'input_dim']


def input_dim(shape) -> int:
    """Number of input dimensions d of an image shape such as (3, 32, 32)."""
    return math.prod(int(s) for s in shape)


def _check(eps1: float, eps_inf: float, d: int, p: float) -> None:
    for name, v in (('eps1', eps1), ('eps_inf', eps_inf)):
        if not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if int(d) != d or d < 2:
        raise ValueError(f"the theorem needs dimension d >= 2, got d={d!r}")
    if not (eps_inf < eps1 < d * eps_inf):
        raise ValueError(
            f"the theorem needs eps_inf < eps1 < d*eps_inf (otherwise one ball contains the other), "
            f"got eps1={eps1:g}, eps_inf={eps_inf:g}, d*eps_inf={d * eps_inf:g}")
    if not (p >= 1):
        raise ValueError(f"p must be >= 1 (or math.inf), got {p!r}")


def union_radius(eps1: float, eps_inf: float, d: int, p: float = 2) -> float:
    """Largest l_p radius inside the union of B_1(eps1) and B_inf(eps_inf) (Prop. 3.1, eq. 1).

    (eps_inf^p + (eps1 - eps_inf)^p / (d-1)^(p-1))^(1/p): the closest point outside both balls
    has one coordinate at eps_inf and spreads the remaining l1 mass evenly over the other d-1.
    CIFAR-10 (eps1=12, eps_inf=8/255, d=3072, p=2): 0.21824. The paper prints 0.2188, which is
    its upper bound (eq. 2) sqrt(eps_inf^2 + eps1^2/(d-1)), not the exact value.
    """
    _check(eps1, eps_inf, d, p)
    if math.isinf(p):
        return float(eps_inf)
    rest = (eps1 - eps_inf) / (d - 1)  # each of the other d-1 coordinates, <= eps_inf
    return (eps_inf ** p + (d - 1) * rest ** p) ** (1 / p)


def hull_radius(eps1: float, eps_inf: float, d: int, p: float = 2) -> float:
    """Largest l_p radius inside the convex hull of B_1(eps1) and B_inf(eps_inf) (Thm. 3.1, eq. 3).

    eps1 / (eps1/eps_inf - alpha + alpha^q)^(1/q), alpha = frac(eps1/eps_inf), 1/p + 1/q = 1.
    CIFAR-10 (eps1=12, eps_inf=8/255, d=3072, p=2): 12/sqrt(382.25) = 0.61377. The paper prints
    0.6178 (eq. 4), which does not follow from its own formula; we trust the formula, which an
    independent computation of the support function confirms (tests/test_geometry.py).
    ImageNet (eps1=255, eps_inf=4/255, d=150528): 2.00001, the paper's "almost exactly 2".
    """
    _check(eps1, eps_inf, d, p)
    if math.isinf(p):   # q = 1: the hull's inner l_inf radius is eps_inf
        return float(eps_inf)
    if p == 1:          # q = inf: alpha^q -> 0 for alpha < 1, the denominator -> 1
        return float(eps1)
    q = p / (p - 1)
    ratio = eps1 / eps_inf
    alpha = ratio - math.floor(ratio)
    return eps1 / (ratio - alpha + alpha ** q) ** (1 / q)


def hull_covers(eps_p: float, eps1: float, eps_inf: float, d: int, p: float = 2) -> bool:
    """The paper's decision rule (Sec. 4.2): does l1 + l-inf training at (eps1, eps_inf) cover
    an l_p threat model of radius eps_p, i.e. is eps_p <= hull_radius(eps1, eps_inf, d, p)?

    Exact for affine classifiers, a rule of thumb for ReLU networks. CIFAR-10's eps2 = 0.5 is
    covered (0.5 <= 0.6138); by the union alone it would not be (0.5 > 0.2182).
    """
    if not isinstance(eps_p, (int, float)) or math.isnan(eps_p) or eps_p <= 0:
        raise ValueError(f"eps_p must be a number > 0, got {eps_p!r}")
    return eps_p <= hull_radius(eps1, eps_inf, d, p)
