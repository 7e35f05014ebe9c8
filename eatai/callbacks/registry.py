"""Training schemes by name: 'eat', 'linf', 'l2', 'l1', 'max', 'avg', 'msd', 'sat', 'ramp', 'eat-pair', and
switches written 'l2>eat@45' (l2-AT for epochs 0-44, then E-AT)."""
from __future__ import annotations

from ..threats import canonical_norm
from .baselines import AVG, MAX, MSD
from .ramp import RAMP, EATPair
from .strategies import EAT, SAT, SingleNorm, Strategy
from .switch import Switch

__all__ = ['STRATEGIES', 'make_strategy']

STRATEGIES = {'eat': EAT, 'linf': SingleNorm, 'l2': SingleNorm, 'l1': SingleNorm, 'max': MAX, 'avg': AVG,
              'msd': MSD, 'sat': SAT, 'ramp': RAMP,
              'eat-pair': EATPair}


def _single(scheme) -> Strategy:
    key = str(scheme).strip().lower()
    try:
        key = canonical_norm(key)
    except ValueError:
        pass
    if key not in STRATEGIES:
        raise ValueError(f"unknown training scheme {scheme!r}: expected one of {', '.join(STRATEGIES)}, "
                         "or a switch such as 'l2>eat@45'")
    cls = STRATEGIES[key]
    return cls(key) if cls is SingleNorm else cls()


def make_strategy(scheme) -> Strategy:
    """A strategy from a scheme name or a `Strategy` instance (returned as it is)."""
    if isinstance(scheme, Strategy):
        return scheme
    text = str(scheme).strip()
    if '>' in text:
        first, rest = text.split('>', 1)
        second, sep, epoch = rest.partition('@')
        if not sep or not epoch.strip().isdigit():
            raise ValueError(f"a switch reads 'first>second@epoch', e.g. 'l2>eat@45'; got {scheme!r}")
        return Switch(_single(first), _single(second), int(epoch))
    return _single(text)
