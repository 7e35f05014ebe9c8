"""Scheme switching: train with one strategy, then another from a given epoch on (the paper's
"l2-init then l-inf + l1", which switches at epoch 45 of 80)."""
from __future__ import annotations

from ..threats import NORMS
from .strategies import Strategy

__all__ = ['Switch']


def _merge(*groups) -> tuple:
    seen = [k for g in groups for k in g]
    ordered = [n for n in NORMS if n in seen] + [k for k in dict.fromkeys(seen) if k not in NORMS]
    return tuple(ordered)


class Switch(Strategy):
    """`first` for epochs < `at_epoch`, `second` from then on."""

    def __init__(self, first: Strategy, second: Strategy, at_epoch: int):
        if isinstance(at_epoch, bool) or not isinstance(at_epoch, int) or at_epoch < 1:
            raise ValueError(f"at_epoch must be an integer >= 1, got {at_epoch!r}")
        self.first, self.second, self.at_epoch = first, second, at_epoch
        self.name = f'{first.name}>{second.name}@{at_epoch}'
        self.norms = _merge(first.norms, second.norms)
        self.one_norm_per_batch = first.one_norm_per_batch and second.one_norm_per_batch
        self.accepts_loss = first.accepts_loss and second.accepts_loss
        self.stat_names = _merge(first.stat_names, second.stat_names)
        self.active = first

    @property
    def robust_keys(self):
        return _merge(self.first.robust_keys, self.second.robust_keys)

    def set_epoch(self, epoch):
        self.active = self.first if epoch < self.at_epoch else self.second
        self.active.set_epoch(epoch)

    def set_mode(self, finetune):
        self.first.set_mode(finetune), self.second.set_mode(finetune)

    def perturb(self, settings, model, x, y):
        return self.active.perturb(settings, model, x, y)

    def stats(self):
        return {**self.active.stats(), 'active': self.active.name}

    def state_dict(self):
        return {'first': self.first.state_dict(), 'second': self.second.state_dict(),
                'active': 'first' if self.active is self.first else 'second'}

    def load_state_dict(self, state):
        self.first.load_state_dict(state['first'])
        self.second.load_state_dict(state['second'])
        self.active = self.first if state['active'] == 'first' else self.second
