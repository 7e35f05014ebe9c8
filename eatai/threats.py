"""The l_p threat models training attacks in: a norm and a radius eps, measured in [0,1] pixel space.

Evaluation's threats (these, and any other registered one) live in `eatai.evaluation.registry`."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ['NORMS', 'DEFAULT_EPS', 'ThreatModel', 'canonical_norm', 'parse_eps', 'parse_threat',
           'default_threats', 'default_eps', 'format_strength', 'split_threat', 'NORM_ALIASES']

NORMS = ('linf', 'l2', 'l1')  # the one place norm names are spelled

# Radii of the paper (Sections 5.1, 5.2): CIFAR-10 8/255, 0.5, 12; ImageNet 4/255, 2, 255.
DEFAULT_EPS = {
    'cifar10': {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0},
    'imagenet': {'linf': 4 / 255, 'l2': 2.0, 'l1': 255.0},
}

NORM_ALIASES = {'linf': 'linf', 'inf': 'linf', 'l_inf': 'linf', 'l-inf': 'linf', 'linfty': 'linf',
                 'l2': 'l2', 'l_2': 'l2', '2': 'l2', 'l1': 'l1', 'l_1': 'l1', '1': 'l1'}


def canonical_norm(norm: str) -> str:
    """Map a user's spelling of a norm ('Linf', 'L2', 'inf', ...) to one of `NORMS`."""
    key = str(norm).strip().lower()
    if key not in NORM_ALIASES:
        raise ValueError(f"unknown norm {norm!r}: expected one of {', '.join(NORMS)}")
    return NORM_ALIASES[key]


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


def format_strength(eps: float) -> str:
    """Write a radius or strength back the way people write it, exactly: 0.5, 12, 8/255 rather than
    0.0313725..., else every digit (two strengths never share a name)."""
    short = f"{eps:g}"
    if float(short) == eps:
        return short
    scaled = eps * 255
    if abs(scaled - round(scaled)) < 1e-9 and round(scaled) != 0:
        return f"{round(scaled)}/255"
    return repr(float(eps))


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
        return f"{self.norm}:{format_strength(self.eps)}"


def default_eps(norm: str, dataset: str = 'cifar10') -> float:
    """The paper's radius for `norm` on `dataset` ('cifar10' or 'imagenet')."""
    key = str(dataset).lower().replace('-', '').replace('_', '')
    if key not in DEFAULT_EPS:
        raise ValueError(f"no default radii for dataset {dataset!r}: known are {', '.join(DEFAULT_EPS)}; give eps explicitly")
    return DEFAULT_EPS[key][canonical_norm(norm)]


def split_threat(text) -> tuple[str, str | None]:
    """'linf:8/255' -> ('linf', '8/255'); also 'l1=12', 'l2 0.5'; a bare name -> (name, None)."""
    s = str(text).strip()
    for sep in (':', '=', ' '):
        if sep in s:
            name, rest = (part.strip() for part in s.split(sep, 1))
            return name, rest
    return s, None


def parse_threat(text, dataset: str = 'cifar10') -> ThreatModel:
    """Read 'linf:8/255', 'l1=12', 'l2 0.5' or a bare 'l1' (the dataset's default radius)."""
    if isinstance(text, ThreatModel):
        return text
    norm, eps = split_threat(text)
    return ThreatModel(norm, default_eps(norm, dataset) if eps is None else parse_eps(eps))


def default_threats(dataset: str = 'cifar10') -> tuple[ThreatModel, ...]:
    """The paper's three threat models for `dataset`, in the order linf, l2, l1."""
    return tuple(ThreatModel(norm, default_eps(norm, dataset)) for norm in NORMS)
