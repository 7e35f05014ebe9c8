"""Strategies: which threat model(s) each training batch is attacked in.

A strategy turns a clean batch into the batch the model trains on and reports, per norm it
attacked in, whether each example stayed correct at every attack iterate. The one
adversarial-training callback (`adversarial.py`) runs any of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .._utils.dist import all_reduce_sum, broadcast_int, is_distributed
from ..threats import NORMS, canonical_norm

__all__ = ['AdversarialBatch', 'RunningMean', 'Strategy', 'SingleNorm', 'RandomNorm', 'EAT', 'SAT']



@dataclass
class AdversarialBatch:
    """The batch to train on, with the per-norm robustness flags of the attacks behind it."""
    x: torch.Tensor
    y: torch.Tensor
    robust: dict            # norm -> (B,) bool, correct at every iterate of that attack
    norm: str | None = None  # the one norm the batch was trained on, when there is one
    # the training loss from the training forward's output on x, replacing fastai's loss_func:
    # for losses over several outputs (RAMP, TRADES), x then holds several point sets concatenated
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None


class RunningMean:
    """Running average of a statistic, e.g. a robust training error.

    beta=None (the default): the mean of everything seen, each value weighted by its count, as
    the authors' code keeps E-AT's statistics (counts since the start of training). beta in
    [0, 1): an exponential moving average with bias correction (as fastai smooths the loss),
    which forgets old batches.
    """

    def __init__(self, beta: float | None = None):
        if beta is not None and not 0 <= beta < 1:
            raise ValueError(f"beta must be None (cumulative mean) or in [0, 1), got {beta!r}")
        self.beta, self.avg, self.count = beta, 0.0, 0.0

    def update(self, value: float, weight: float = 1.0) -> None:
        """Add `value`, the mean of `weight` observations (a batch's error rate and its size); the
        EMA takes one step per update whatever the weight."""
        if not weight > 0:
            return
        if self.beta is None:
            self.count += weight
            self.avg += (float(value) - self.avg) * weight / self.count
        else:
            self.count += 1
            self.avg = self.beta * self.avg + (1 - self.beta) * float(value)

    @property
    def value(self) -> float:
        if self.count == 0:
            return math.nan
        return self.avg if self.beta is None else self.avg / (1 - self.beta ** self.count)

    def state_dict(self) -> dict:
        return {'beta': self.beta, 'avg': self.avg, 'count': self.count}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.avg, self.count = state['beta'], state['avg'], state['count']


class Strategy:
    """Base class: `perturb` one clean batch; `state_dict` whatever must survive a save.

    `settings` (an `AttackSettings`) runs the attacks: `settings.run(model, x, y, norm,
    self.attack_method)`; `attack_method` is the strategy's default, 'apgd' or 'pgd'.
    """
    name: str = ''
    norms: tuple = ()
    attack_method: str = 'apgd'
    one_norm_per_batch: bool = True   # False: every batch is attacked in several norms
    stat_names: tuple = ()            # keys of `stats()` shown as columns of fastai's table
    accepts_loss: bool = True         # False: its own training loss or attack; no TRADES on top

    @property
    def robust_keys(self) -> tuple:
        """Keys of `AdversarialBatch.robust` this strategy reports (a norm, or 'union')."""
        return self.norms

    def perturb(self, settings, model, x, y) -> AdversarialBatch:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of each training epoch."""

    def set_mode(self, finetune: bool) -> None:
        """Called by `fit_adversarial` (False) and `finetune_adversarial` (True), for schemes whose
        paper defaults differ between training from scratch and fine-tuning."""

    def stats(self) -> dict:
        """Running numbers worth reporting at the end of an epoch (name -> float)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.norms)})"


class SingleNorm(Strategy):
    """Adversarial training in one threat model (l_p-AT; l_p -> l_q transfer fine-tuning)."""

    def __init__(self, norm: str):
        self.name = canonical_norm(norm)
        self.norms = (self.name,)

    def perturb(self, settings, model, x, y):
        x_adv, correct = settings.run(model, x, y, self.name, self.attack_method)
        return AdversarialBatch(x_adv, y, {self.name: correct}, self.name)


class RandomNorm(Strategy):
    """One norm per batch, drawn from `probabilities()` with a generator of its own: the draws
    do not shift other random streams, and its state is saved so a resumed run draws the same."""

    def __init__(self, seed: int | None = None):
        self.generator = torch.Generator()
        self.seed = int(torch.randint(2 ** 62, ()).item()) if seed is None else seed
        self.generator.manual_seed(self.seed)
        self._synced = not is_distributed()

    def probabilities(self) -> dict:
        return {norm: 1 / len(self.norms) for norm in self.norms}

    def choose(self) -> str:
        """Draw the norm of the next batch (the same on every process of a DDP run)."""
        if not self._synced:   # every process draws from rank 0's generator
            self.seed, self._synced = broadcast_int(self.seed), True
            self.generator.manual_seed(self.seed)
        u = torch.rand((), generator=self.generator).item()
        cumulative = 0.0
        for norm, p in self.probabilities().items():
            cumulative += p
            if u < cumulative:
                return norm
        return self.norms[-1]

    def perturb(self, settings, model, x, y):
        norm = self.choose()
        x_adv, correct = settings.run(model, x, y, norm, self.attack_method)
        self.observe(norm, correct)
        return AdversarialBatch(x_adv, y, {norm: correct}, norm)

    def observe(self, norm: str, correct: torch.Tensor) -> None:
        """What the attack in `norm` found on this batch."""

    def state_dict(self):
        return {'generator': self.generator.get_state(), 'seed': self.seed}

    def load_state_dict(self, state):
        self.generator.set_state(state['generator'])
        self.seed, self._synced = state.get('seed', self.seed), True


class EAT(RandomNorm):
    """Extreme-norm AT (paper Sec. 4.2): each batch is attacked in l1 or l-inf only, norm p
    drawn with probability rerr_p / (rerr_1 + rerr_inf) (eq. 6), where rerr_p is the running
    robust training error of the examples attacked in p, from the attacks' own robustness flags
    (no extra attack): by default the fraction of all of them since training started, as in the
    authors' code; `beta` in [0, 1) makes it an exponential moving average instead.
    0.5 / 0.5 until both norms have been seen.
    """
    name, norms = 'eat', ('linf', 'l1')

    def __init__(self, beta: float | None = None, seed: int | None = None):
        super().__init__(seed)
        self.rerr = {norm: RunningMean(beta) for norm in self.norms}

    def probabilities(self) -> dict:
        """Sampling probability of each norm (eq. 6)."""
        errors = [self.rerr[norm].value for norm in self.norms]
        total = sum(errors)
        if any(math.isnan(e) for e in errors) or total <= 0:
            return {norm: 1 / len(self.norms) for norm in self.norms}
        return {norm: e / total for norm, e in zip(self.norms, errors)}

    def observe(self, norm, correct):
        # summed over all processes: every process keeps the same statistics and draws alike
        errors, n = all_reduce_sum(torch.tensor([float((~correct).sum()), float(correct.numel())])).tolist()
        if n:
            self.rerr[norm].update(errors / n, weight=n)

    def stats(self):
        return {f'prob_{norm}': p for norm, p in self.probabilities().items()}

    def state_dict(self):
        return {**super().state_dict(), 'rerr': {n: m.state_dict() for n, m in self.rerr.items()}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        for norm, s in state['rerr'].items():
            self.rerr[norm].load_state_dict(s)


class SAT(RandomNorm):
    """Stochastic AT (Madaan et al. 2021): l-inf, l2 or l1 drawn uniformly per batch; PGD."""
    name, norms, attack_method = 'sat', NORMS, 'pgd'
