"""Threat models: an l_p norm and a radius eps, measured in [0,1] pixel space."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ['NORMS', 'DEFAULT_EPS', 'ThreatModel', 'canonical_norm', 'parse_eps', 'parse_threat',
           'default_threats', 'default_eps']

NORMS = ('linf', 'l2', 'l1')  # the one place norm names are spelled

# Radii of the paper (Sections 5.1, 5.2): CIFAR-10 8/255, 0.5, 12; ImageNet 4/255, 2, 255.
DEFAULT_EPS = {
    'cifar10': {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0},
    'imagenet': {'linf': 4 / 255, 'l2': 2.0, 'l1': 255.0},
}

_NORM_ALIASES = {'linf': 'linf', 'inf': 'linf', 'l_inf': 'linf', 'l-inf': 'linf', 'linfty': 'linf',
                 'l2': 'l2', 'l_2': 'l2', '2': 'l2', 'l1': 'l1', 'l_1': 'l1', '1': 'l1'}


def canonical_norm(norm: str) -> str:
    """Map a user's spelling of a norm ('Linf', 'L2', 'inf', ...) to one of `NORMS`."""
    key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise ValueError(f"unknown norm {norm!r}: expected one of {', '.join(NORMS)}")
    return _NORM_ALIASES[key]


def parse_eps(text) -> float:
    """Parse a radius written as a number or a fraction ('0.5', '12', '8/255'); no eval."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    try:
        if '/' in s:
            num, den = s.split('/', 1)
            value = float(num) / float(den)
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"cannot read eps {text!r}: write a number such as 0.5 or a fraction such as 8/255") from None
    return value


def _check_eps(eps: float, norm: str) -> None:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise ValueError(f"eps for {norm} must be a number, got {eps!r}")
    if math.isnan(eps) or math.isinf(eps) or eps <= 0:
        raise ValueError(f"eps for {norm} must be a finite number > 0, got {eps!r}")


def _fmt_eps(eps: float) -> str:
    """Write eps back the way people write it: 8/255 rather than 0.0313725..."""
    scaled = eps * 255
    if abs(scaled - round(scaled)) < 1e-9 and eps < 1 and round(scaled) != 0:
        return f"{round(scaled)}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class ThreatModel:
    """The l_p ball of radius `eps` around an input, intersected with the [0,1] box."""
    norm: str
    eps: float

    def __post_init__(self):
        object.__setattr__(self, 'norm', canonical_norm(self.norm))
        _check_eps(self.eps, self.norm)
        object.__setattr__(self, 'eps', float(self.eps))

    def __str__(self) -> str:
        return f"{self.norm}:{_fmt_eps(self.eps)}"


def default_eps(norm: str, dataset: str = 'cifar10') -> float:
    """The paper's radius for `norm` on `dataset` ('cifar10' or 'imagenet')."""
    key = str(dataset).lower().replace('-', '').replace('_', '')
    if key not in DEFAULT_EPS:
        raise ValueError(f"no default radii for dataset {dataset!r}: known are {', '.join(DEFAULT_EPS)}; give eps explicitly")
    return DEFAULT_EPS[key][canonical_norm(norm)]


def parse_threat(text, dataset: str = 'cifar10') -> ThreatModel:
    """Read 'linf:8/255', 'l1=12', 'l2 0.5' or a bare 'l1' (the dataset's default radius)."""
    if isinstance(text, ThreatModel):
        return text
    s = str(text).strip()
    for sep in (':', '=', ' '):
        if sep in s:
            norm, eps = (part.strip() for part in s.split(sep, 1))
            return ThreatModel(norm, parse_eps(eps))
    return ThreatModel(s, default_eps(s, dataset))


def default_threats(dataset: str = 'cifar10') -> tuple[ThreatModel, ...]:
    """The paper's three threat models for `dataset`, in the order linf, l2, l1."""
    return tuple(ThreatModel(norm, default_eps(norm, dataset)) for norm in NORMS)
