"""The l_p balls as registered threats ('linf', 'l2', 'l1'), attacked with AutoAttack's attacks (pyautoattack).

Each attack runs as pyautoattack's AutoAttack(version='standard') restricted to that attack, with the
budget's APGD settings and Square queries, and draws its random starts per point (`PointStreams`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attacks import EVALUATION, apgd, lp_norm, make_ball
from ..threats import DEFAULT_EPS, NORM_ALIASES, NORMS, ThreatModel
from .budget import APGDSettings
from .registry import AttackContext, Threat, register_threat
from .streams import PointStreams

__all__ = ['LpThreat']

_AA_NORM = {'linf': 'Linf', 'l2': 'L2', 'l1': 'L1'}
_HEADER = {'linf': 'l_inf', 'l2': 'l_2', 'l1': 'l_1'}
_MIN_CLASSES = 4  # APGD-T's targeted DLR loss reads the 4th largest logit


@dataclass(frozen=True)
class LpThreat(ThreatModel, Threat):
    """The l_p ball of radius `eps` around x, within [0,1]; its attacks are AutoAttack's (per the budget)."""
    family = 'autoattack'
    strength_label = 'radius'
    quick_attack_name = 'APGD-CE'

    @property
    def name(self) -> str:
        return self.norm

    @property
    def strength(self) -> float:
        return self.eps

    @property
    def header(self) -> str:
        return f"{_HEADER[self.norm]} ({str(self).split(':', 1)[1]})"

    def contains(self, x, x_adv):
        return make_ball(self.norm, self.eps).contains(x, x_adv)

    def random_start(self, x, generator=None):
        return make_ball(self.norm, self.eps).random_start(x, generator)

    def size(self, x, x_adv):
        return lp_norm(x_adv - x, self.norm).cpu().double()

    def attacks(self, budget):
        return budget.attacks

    def check(self, budget, n_classes):
        if n_classes < _MIN_CLASSES:
            raise ValueError(f"APGD-T needs a model with at least {_MIN_CLASSES} classes, this one has {n_classes}")

    def attack(self, name, model, x, y, context: AttackContext):
        aa = _autoattack(model, self, context.budget, name, context.n_classes, context.seed, context.device,
                         context.logger)
        _draw_per_point(aa, context.seed, self)
        # contiguous: pyautoattack calls .view on x_adv - x and breaks on permuted inputs
        x_adv, _ = aa.run_standard_evaluation(x.contiguous(), y.contiguous(), batch_size=len(y))
        return x_adv

    def quick_attack(self, model, x, y, n_iter, seed):
        """APGD-CE with evaluation settings (eatai's own APGD)."""
        return apgd(model, x, y, self.norm, self.eps, **{**EVALUATION, 'n_iter': n_iter, 'seed': seed})[0]


def _configure(attack, settings: APGDSettings, n_restarts: int) -> None:
    """Apply one norm's settings to a pyautoattack APGD object."""
    attack.n_restarts, attack.use_largereps = n_restarts, settings.use_largereps
    if attack.n_iter_orig != settings.n_iter:
        n_iter = settings.n_iter
        attack.n_iter = attack.n_iter_orig = n_iter
        # the step-size checkpoints are derived from n_iter in APGDAttack.__init__; keep them in step
        attack.n_iter_2 = max(int(0.22 * n_iter), 1)
        attack.n_iter_min = max(int(0.06 * n_iter), 1)
        attack.size_decr = max(int(0.03 * n_iter), 1)


def _autoattack(model, threat: LpThreat, budget, attack: str, n_classes: int, seed: int, device, logger):
    """pyautoattack's AutoAttack(version='standard') for `threat`, running `attack` alone,
    with `budget`'s APGD settings and Square queries."""
    from pyautoattack import AutoAttack  # imported here: importing eatai stays light

    # version='standard' sets every attack as AutoAttack's standard evaluation has it, per norm
    aa = AutoAttack(model, norm=_AA_NORM[threat.norm], eps=threat.eps, seed=seed, device=device, version='standard')
    aa.attacks_to_run = [attack]
    aa.verbose = False
    aa.logger = aa.apgd.logger = aa.apgd_targeted.logger = logger
    settings = budget.settings(threat.norm)
    _configure(aa.apgd, settings, settings.n_restarts)
    _configure(aa.apgd_targeted, settings, settings.n_restarts_targeted)
    # AutoAttack would index past the logits with more targets than other classes
    aa.apgd_targeted.n_target_classes = min(settings.n_target_classes, n_classes - 1)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_classes - 1)
    aa.square.n_queries = budget.square_queries
    return aa


def _draw_per_point(aa, seed: int, threat) -> None:
    """Random starts per point for the attacks of `aa` that draw them (see `PointStreams`).
    FAB-T draws none: AutoAttack runs it with one restart, which starts at the clean point."""
    streams = PointStreams(f"{seed}|{threat}")
    for name, attack in (('apgd-ce', aa.apgd), ('apgd-t', aa.apgd_targeted), ('square', aa.square)):
        streams.wrap(attack, name)


def _register() -> None:
    for norm in NORMS:
        aliases = [a for a, n in NORM_ALIASES.items() if n == norm]
        register_threat(norm, lambda eps, norm=norm: LpThreat(norm, eps), aliases=aliases, overwrite=True,
                        default_strength={dataset: radii[norm] for dataset, radii in DEFAULT_EPS.items()})


_register()
