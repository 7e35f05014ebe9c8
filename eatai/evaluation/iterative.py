"""Threats attacked by one white-box iterative attack of their own (StAdv, ReColorAdv, JPEG).

Such a threat names its attack (`family`) and the papers' step count (`paper_steps`); the
evaluation budget picks the steps ('quick': `quick_steps`, every other budget: the paper's), and
each point's random start comes from its own stream, so a verdict does not depend on the batch.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .registry import AttackContext, Threat
from .streams import point_generators

__all__ = ['IterativeThreat', 'steps_for']


def steps_for(budget, paper_steps: int, quick_steps: int) -> int:
    """The attack steps a budget gives a threat whose papers use `paper_steps`."""
    return quick_steps if getattr(budget, 'name', None) == 'quick' else paper_steps


class IterativeThreat(Threat):
    """A threat with one gradient attack, `run`, of `steps_for(budget)` steps from per-point random starts.

    A subclass sets `name`, `family` (the attack's name in tables and logs), `paper_steps`,
    `quick_steps`, `strength_range`, and implements `contains`, `random_start` and `run`."""
    family: ClassVar[str] = 'pgd'
    paper_steps: ClassVar[int] = 100
    quick_steps: ClassVar[int] = 20

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_iter: int,
            generators: list[torch.Generator]) -> torch.Tensor:
        """`n_iter` steps on x (N, C, H, W) in [0,1], y (N,), point i starting from `generators[i]`:
        the points to judge, each inside the threat."""
        raise NotImplementedError

    def steps(self, budget) -> int:
        return steps_for(budget, self.paper_steps, self.quick_steps)

    def attack(self, name, model, x, y, context: AttackContext):
        return self.run(model, x, y, self.steps(context.budget), context.generators(self, name, x, y))

    def quick_attack(self, model, x, y, n_iter, seed):
        return self.run(model, x, y, n_iter, point_generators(f"{seed}|{self}|quick", x, y))

    @property
    def quick_attack_name(self) -> str:
        return self.family
