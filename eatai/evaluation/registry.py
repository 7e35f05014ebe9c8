"""The threat registry: threat models as objects, registered by name as timm registers models.

A threat is a set of inputs an adversary may put in place of x, of a given strength. The runner,
the union, `union_only`, curves, pictures and tables ask a threat what they need (its attacks,
whether a point is inside, a random start, its size) and never name a norm. Adding one is a class
and a call: `register_threat('noise', UniformNoise, default_strength={'cifar10': 0.1})`; then
'noise:0.1' (or 'noise', with a default) works wherever a threat is taken.
"""
from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from ..threats import ThreatModel, format_strength, parse_eps, split_threat
from .streams import point_generators

__all__ = ['Threat', 'AttackContext', 'register_threat', 'get_threat', 'threat_names', 'parse_threats',
           'canonical_threat', 'unregister_threat', 'sampling_attack']


@dataclass
class AttackContext:
    """What the runner gives a threat's attack besides the points."""
    budget: object               # the `EvalBudget`
    seed: int
    n_classes: int
    device: torch.device
    logger: logging.Logger       # collects the attacks' warnings for the result's notes

    def generators(self, threat, attack: str, x: torch.Tensor, y: torch.Tensor) -> list[torch.Generator]:
        """One generator per point, keyed to the seed, the threat, the attack and the point itself."""
        return point_generators(f"{self.seed}|{threat}|{attack}", x, y)


def sampling_attack(threat: 'Threat', model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    generators: list[torch.Generator], n_samples: int) -> torch.Tensor:
    """(N, ...) per point the first of `n_samples` random starts (drawn from its own generator) that the
    model misclassifies, else the last one drawn. x: (N, C, H, W) in [0,1]; y: (N,)."""
    x_adv, found = x.clone(), torch.zeros(len(y), dtype=torch.bool, device=x.device)
    for _ in range(n_samples):
        starts = torch.cat([threat.random_start(x[i:i + 1], g) for i, g in enumerate(generators)])
        with torch.no_grad():
            fooled = model(starts).argmax(1) != y
        take = ~found
        x_adv[take] = starts[take]            # a point keeps its first success, else its latest draw
        found |= fooled
    return x_adv


class Threat:
    """A threat model of a given `strength`; subclasses are frozen dataclasses with a `strength` field.

    A subclass sets `name` (its registry key) and implements `contains` and `random_start`. Its
    attack family is `family`: the default, 'sampling', draws `n_samples` random starts per point
    from the point's own stream and keeps one the model misclassifies; gradient attacks override
    `attacks`, `attack` and `quick_attack`.
    """
    name: ClassVar[str] = ''
    family: ClassVar[str] = 'sampling'
    strength_label: ClassVar[str] = 'strength'   # axis label of curves: 'radius' for balls
    strength_range: ClassVar[tuple[float, float]] = (0.0, math.inf)
    n_samples: ClassVar[int] = 10
    quick_attack_name: ClassVar[str] = 'random sampling'   # what `quick_attack` is, for curves' titles
    # False for what is not an attack (common corruptions): judged on every point, clean-correct or not,
    # and left out of the union and of `union_only`'s gating
    in_union: ClassVar[bool] = True
    # True when a larger strength allows everything a smaller one does (balls, flow, colour and JPEG bounds): then
    # a point's smallest breaking strength exists and curves over strength mean something. False: corruptions
    nested: ClassVar[bool] = True
    # the strengths a curve searches by default, in units of the threat's strength (`curves.default_radii`)
    curve_ladder: ClassVar[tuple[float, ...]] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)

    def __str__(self) -> str:
        return f"{self.name}:{format_strength(self.strength)}"

    @property
    def header(self) -> str:
        """Column header of tables: 'noise (0.1)'."""
        return f"{self.name} ({format_strength(self.strength)})"

    def contains(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """(N,) bool: x_adv is an allowed replacement of x (and lies in [0,1])."""
        raise NotImplementedError

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random allowed replacement of x (N, C, H, W), drawn from `generator` (on the CPU)."""
        raise NotImplementedError

    def size(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """(N,) the strength x_adv needs (curves record it); by default the threat's own strength."""
        return torch.full((len(x),), float(self.strength), dtype=torch.float64)

    def attacks(self, budget) -> tuple[str, ...]:
        """The attacks run in turn under `budget`, each on the points still robust."""
        return (self.family,)

    def check(self, budget, n_classes: int) -> None:
        """Raise ValueError if the attacks cannot run on a model with `n_classes` outputs."""

    def attack(self, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               context: AttackContext) -> torch.Tensor:
        """Attack `name` on x (N, C, H, W) in [0,1], y (N,): the points to judge, inside the threat."""
        return sampling_attack(self, model, x, y, context.generators(self, name, x, y), self.n_samples)

    def quick_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_iter: int, seed: int) -> torch.Tensor:
        """One cheap attack of `n_iter` steps (curves and pictures use it)."""
        return sampling_attack(self, model, x, y, point_generators(f"{seed}|{self}|quick", x, y), n_iter)


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[[float], Threat]
    default_strength: dict
    parse: Callable[[str], float]
    usage: str | None = None


_REGISTRY: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}


def register_threat(name: str, factory: Callable | None = None, *, default_strength: dict | None = None,
                    aliases=(), parse: Callable[[str], float] = parse_eps, overwrite: bool = False,
                    usage: str | None = None):
    """Register `factory` (a `Threat` subclass or any callable strength -> Threat) as `name`.

    default_strength: dataset -> strength, used for a bare name ('linf' on CIFAR-10: 8/255).
    parse: reads the text after 'name:' (default: numbers and fractions such as 8/255).
    usage: how to write the threat, for the error a bare name without a default gets
    (default: "'name:<strength>'").
    Used bare it is a decorator: `@register_threat('noise')` above the class."""
    if factory is None:
        return lambda f: register_threat(name, f, default_strength=default_strength, aliases=aliases, parse=parse,
                                         overwrite=overwrite, usage=usage)
    key = str(name).strip().lower()
    if not key or any(c in key for c in ':= '):
        raise ValueError(f"a threat name is a word without ':', '=' or spaces, got {name!r}")
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"a threat named {key!r} is registered already; pass overwrite=True to replace it")
    _REGISTRY[key] = _Entry(key, factory, dict(default_strength or {}), parse, usage)
    for alias in (key, *aliases):
        _ALIASES[str(alias).strip().lower()] = key
    return factory


def unregister_threat(name: str) -> None:
    """Remove a registered threat and its aliases (a notebook redefining one, a test cleaning up)."""
    key = _entry(name).name
    del _REGISTRY[key]
    for alias in [a for a, k in _ALIASES.items() if k == key]:
        del _ALIASES[alias]


def threat_names() -> list[str]:
    """The registered threat names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        close = difflib.get_close_matches(str(name).lower(), list(_ALIASES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ''
        raise ValueError(f"unknown threat {name!r}{hint}: registered are {', '.join(threat_names())}")
    return _REGISTRY[key]


def _check_strength(entry: _Entry, threat: Threat) -> Threat:
    low, high = getattr(threat, 'strength_range', (0.0, math.inf))
    strength = threat.strength
    if not (isinstance(strength, (int, float)) and low <= strength <= high):
        raise ValueError(f"strength {strength!r} of threat {entry.name!r} is out of range: it must lie in "
                         f"[{format_strength(low)}, {format_strength(high)}]")
    return threat


def canonical_threat(name: str) -> str:
    """The registered name for `name` or one of its aliases ('Linf', 'inf' -> 'linf')."""
    return _entry(name).name


def get_threat(spec, dataset: str = 'cifar10', strength: float | None = None) -> Threat:
    """The threat `spec` names: a `Threat` (returned as it is), a training `ThreatModel` (its l_p threat),
    or text 'name:strength' ('linf:8/255', 'noise:0.1') or a bare name (the dataset's default strength,
    or `strength` when given)."""
    if isinstance(spec, Threat):
        return spec
    if isinstance(spec, ThreatModel):   # training's l_p threat: the same ball
        return _entry(spec.norm).factory(spec.eps)
    name, text = split_threat(spec)
    entry = _entry(name)
    if strength is not None and text is None:
        return _check_strength(entry, entry.factory(strength))
    if text is None:
        key = str(dataset).lower().replace('-', '').replace('_', '')
        if key not in entry.default_strength:
            known = ', '.join(entry.default_strength) or 'none'
            raise ValueError(f"threat {entry.name!r} has no default strength for dataset {dataset!r} (defaults: "
                             f"{known}): write it as {entry.usage or repr(entry.name + ':<strength>')}")
        strength = entry.default_strength[key]
    else:
        strength = entry.parse(text)
    return _check_strength(entry, entry.factory(strength))


def parse_threats(threats, dataset: str = 'cifar10') -> list[Threat]:
    """A list of threats from one spec or several (see `get_threat`); refuses none and repeats."""
    if isinstance(threats, str) or not hasattr(threats, '__iter__'):
        threats = [threats]
    parsed = [get_threat(t, dataset) for t in threats]
    names = [str(t) for t in parsed]
    if not parsed:
        raise ValueError("threats is empty: give at least one threat model such as 'linf:8/255'")
    if len(set(names)) != len(names):
        raise ValueError(f"threat models repeat: {names}")
    return parsed
