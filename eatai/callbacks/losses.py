"""Training losses on top of any scheme: `TRADES` (Zhang et al. 2019).

A training loss changes two things of a strategy's batch: the attack's objective
(`attack_loss`, run by `AttackSettings`) and the loss of the training forward, which may need
several outputs (clean and adversarial): `prepare` concatenates the point sets into one batch
and hands the callback an `AdversarialBatch.loss_fn` computed from the training forward's output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F

from .strategies import AdversarialBatch

__all__ = ['TrainingLoss', 'TRADES', 'trades_loss', 'TRAINING_LOSSES', 'make_training_loss']


class TrainingLoss:
    """Base class: the attack objective and the training loss of an adversarial batch."""
    attack_loss: str = 'ce'

    def prepare(self, batch: AdversarialBatch, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        """The batch to train on, given the strategy's batch and the clean x (B, ...), y (B,)."""
        return batch

    def state_dict(self) -> dict:
        return {}


def trades_loss(clean_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """CE(f(x), y) + beta * KL(f(x) || f(x')), the KL summed over classes and averaged over the
    adversarial points ('batchmean', as TRADES). clean_logits (B, K), y (B,); adv_logits (R*B, K):
    R adversarial sets of the batch (e.g. AVG's three norms), each paired with the clean outputs."""
    clean, adv = clean_logits.float(), adv_logits.float()
    reps = adv.shape[0] // clean.shape[0]
    log_p = F.log_softmax(clean, dim=1).repeat(reps, 1)
    kl = F.kl_div(F.log_softmax(adv, dim=1), log_p, reduction='batchmean', log_target=True)
    return F.cross_entropy(clean, y) + beta * kl


@dataclass
class TRADES(TrainingLoss):
    """TRADES as the training loss of any scheme: the attack maximises KL(f(x) || f(x')) in the
    scheme's ball, the model trains on CE(f(x), y) + beta * KL(f(x) || f(x')).

    Clean and adversarial points go through one training forward (BatchNorm sees a batch of 2B;
    TRADES' code runs two forwards), and the attack starts at a random point of the ball, because
    the KL has zero gradient at x. The E-AT statistics still count errors of the adversarial point.
    Works with 'eat', single norms, 'max', 'avg', 'sat' and switches of them; not with 'msd' (its
    attack picks steps by the cross-entropy) nor 'ramp' (a loss of its own).
    """
    beta: float = 6.0
    attack_loss = 'kl'
    name = 'trades'

    def __post_init__(self):
        b = self.beta
        if isinstance(b, bool) or not isinstance(b, (int, float)) or math.isnan(b) or math.isinf(b) or b <= 0:
            raise ValueError(f"TRADES needs beta > 0 (finite; the paper uses 6.0), got {b!r}")
        self.beta = float(b)

    def prepare(self, batch, x, y):
        return replace(batch, x=torch.cat([x, batch.x]), y=torch.cat([y, batch.y]),
                       loss_fn=partial(self._loss, y=y))

    def _loss(self, pred, y):
        return trades_loss(pred[:len(y)], pred[len(y):], y, self.beta)

    def state_dict(self):
        return {'name': self.name, 'beta': self.beta}


TRAINING_LOSSES = {'trades': TRADES}


def make_training_loss(state: dict | None) -> TrainingLoss | None:
    """Rebuild a training loss from its `state_dict` (None: fastai's loss)."""
    if not state:
        return None
    state = dict(state)
    return TRAINING_LOSSES[state.pop('name')](**state)
