"""APGD's step-size rules, applied at checkpoints between iterations.

- `OscillationSchedule` (l-inf, l2; Croce & Hein 2020, Sec. 3.2): at each checkpoint an
  example's step size is halved, and it restarts from its best point, if its loss increased
  in at most a fraction rho of the steps since the last checkpoint (condition 1), or if its
  step was not reduced last time and its best loss has not improved since (condition 2).
  Checkpoints come after 0.22 N iterations, then ever closer (-0.03 N each, at least 0.06 N).
- `SparsitySchedule` (l1; Croce & Hein 2021, "Mind the box"): the fraction of coordinates
  updated per step follows the sparsity of the best point found so far (divided by 1.5), and
  the step size shrinks by 1.5 per checkpoint (at most to eps/10) unless the sparsity dropped
  by more than 5%, in which case it is reset to eps and the example restarts from its best.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._shapes import per_example

__all__ = ['AttackState', 'OscillationSchedule', 'SparsitySchedule']



@dataclass
class AttackState:
    """Per-example tensors of one APGD run; B = batch size."""
    x_adv: torch.Tensor       # (B, ...) current iterate
    grad: torch.Tensor        # (B, ...) loss gradient at x_adv
    loss: torch.Tensor        # (B,) loss at x_adv
    x_best: torch.Tensor      # (B, ...) highest-loss iterate so far
    grad_best: torch.Tensor   # (B, ...) gradient there
    loss_best: torch.Tensor   # (B,)
    step_size: torch.Tensor   # (B, 1, ..., 1)
    sparsity: torch.Tensor | None = None  # (B,) fraction of coordinates an l1 step moves

    def restart_from_best(self, mask: torch.Tensor) -> None:
        """Examples in `mask` continue from their best point, with its gradient."""
        m = per_example(mask, self.x_adv)
        self.x_adv = torch.where(m, self.x_best, self.x_adv)
        self.grad = torch.where(m, self.grad_best, self.grad)


class OscillationSchedule:
    """Step-size halving on oscillation or stagnation (APGD for l-inf and l2)."""

    def __init__(self, n_iter: int, rho: float = 0.75):
        self.rho = rho
        self.period = max(int(0.22 * n_iter), 1)
        self.shrink = max(int(0.03 * n_iter), 1)
        self.min_period = max(int(0.06 * n_iter), 1)
        self.since_check = 0

    def start(self, x: torch.Tensor, state: AttackState, base_step: float) -> None:
        self.losses = [state.loss]                  # loss of iterate 0, 1, 2, ...
        self.loss_best_at_check = state.loss_best.clone()
        self.reduced_at_check = torch.ones_like(state.loss_best, dtype=torch.bool)

    def update(self, state: AttackState) -> None:
        self.losses.append(state.loss)
        self.since_check += 1
        if self.since_check < self.period:
            return
        recent = torch.stack(self.losses[-self.period - 1:])          # (period+1, B)
        n_increase = (recent[1:] > recent[:-1]).sum(dim=0)
        # AutoAttack's comparison (<=): this is the behaviour its evaluations were tuned with
        oscillating = n_increase <= self.rho * self.period
        stagnating = ~self.reduced_at_check & (self.loss_best_at_check >= state.loss_best)
        reduce = oscillating | stagnating
        state.step_size = torch.where(per_example(reduce, state.step_size), state.step_size / 2, state.step_size)
        state.restart_from_best(reduce)
        self.reduced_at_check = reduce
        self.loss_best_at_check = state.loss_best.clone()
        self.since_check = 0
        self.period = max(self.period - self.shrink, self.min_period)


class SparsitySchedule:
    """Adaptive sparsity and step size (APGD-l1)."""

    def __init__(self, n_iter: int, init_sparsity: float, step_decay: float = 1.5, min_step_ratio: float = 10.0):
        # init_sparsity has no default here: APGDConfig.l1_sparsity holds it (0.05, AutoAttack's)
        self.period = max(int(0.04 * n_iter), 1)
        self.init_sparsity = init_sparsity
        self.step_decay, self.min_step_ratio = step_decay, min_step_ratio
        self.since_check = 0

    def start(self, x: torch.Tensor, state: AttackState, base_step: float) -> None:
        self.x, self.base_step, self.d = x, base_step, x.shape[1:].numel()
        state.sparsity = torch.full_like(state.loss_best, self.init_sparsity)
        self.nonzero_before = torch.full_like(state.loss_best, float(self.d))

    def update(self, state: AttackState) -> None:
        self.since_check += 1
        if self.since_check < self.period:
            return
        nonzero = (state.x_best != self.x).reshape(self.x.shape[0], -1).sum(dim=1).to(state.loss_best.dtype)
        # sparser best point (by > 5%): reset the step size and continue from there
        sparser = nonzero < 0.95 * self.nonzero_before
        state.sparsity = nonzero / self.d / 1.5
        step = torch.where(per_example(sparser, state.step_size), self.base_step, state.step_size / self.step_decay)
        state.step_size = step.clamp(self.base_step / self.min_step_ratio, self.base_step)
        state.restart_from_best(sparser)
        self.nonzero_before = nonzero
        self.since_check = 0
