"""The multi-norm baselines of the paper's Table 1 (Sec. 4.1), as strategies: MAX and AVG
(Tramèr & Boneh 2019) attack every batch in each of l-inf, l2 and l1; MSD (Maini et al. 2020)
runs one attack over the union. They use PGD (SLIDE for l1) unless the settings say 'apgd'."""
from __future__ import annotations

import torch

from .._utils.dist import all_reduce_sum
from ..threats import NORMS
from .strategies import AdversarialBatch, Strategy

__all__ = ['MultiNorm', 'MAX', 'AVG', 'MSD']


class MultiNorm(Strategy):
    """Attack each batch in every norm; count, per epoch, which norm gave the highest loss."""
    norms, attack_method, one_norm_per_batch = NORMS, 'pgd', False
    stat_names = tuple(f'max_{n}' for n in NORMS)

    @property
    def robust_keys(self):
        return self.norms + ('union',)

    def set_epoch(self, epoch):
        self._wins, self._seen = torch.zeros(len(self.norms), dtype=torch.long), 0

    def _attack_all(self, settings, model, x, y):
        """Per norm: x_adv, correct, loss; plus the robustness flags and the per-example winner."""
        runs = [settings.run(model, x, y, norm, self.attack_method, return_loss=True) for norm in self.norms]
        robust = {norm: correct for norm, (_, correct, _) in zip(self.norms, runs)}
        robust['union'] = torch.stack(list(robust.values())).all(dim=0)
        winner = torch.stack([loss for _, _, loss in runs]).argmax(dim=0)               # (B,)
        if not hasattr(self, '_wins'):
            self.set_epoch(0)
        self._wins += torch.bincount(winner, minlength=len(self.norms)).cpu()
        self._seen += len(y)
        return runs, robust, winner

    def state_dict(self):
        return {'wins': getattr(self, '_wins', torch.zeros(len(self.norms), dtype=torch.long)).clone(),
                'seen': getattr(self, '_seen', 0)}

    def load_state_dict(self, state):
        self._wins, self._seen = state['wins'].clone(), state['seen']

    def stats(self):
        wins = getattr(self, '_wins', torch.zeros(len(self.norms), dtype=torch.long))
        total = all_reduce_sum(torch.cat([wins.double(), torch.tensor([float(getattr(self, '_seen', 0))])]))
        seen = max(total[-1].item(), 1)
        return {f'max_{n}': w / seen for n, w in zip(self.norms, total[:-1].tolist())}


class MAX(MultiNorm):
    """Train on the per-example highest-loss point over the three attacks."""
    name = 'max'

    def perturb(self, settings, model, x, y):
        runs, robust, winner = self._attack_all(settings, model, x, y)
        points = torch.stack([x_adv for x_adv, _, _ in runs])                           # (P, B, ...)
        return AdversarialBatch(points[winner, torch.arange(len(y), device=winner.device)], y, robust)


class AVG(MultiNorm):
    """Train on the average of the three adversarial losses: the three adversarial batches are
    concatenated, so the mean loss over the 3B examples is the average of the per-norm means.
    (BatchNorm then sees one batch of 3B rather than three of B.)"""
    name = 'avg'

    def perturb(self, settings, model, x, y):
        runs, robust, _ = self._attack_all(settings, model, x, y)
        return AdversarialBatch(torch.cat([x_adv for x_adv, _, _ in runs]), y.repeat(len(runs)), robust)


class MSD(Strategy):
    """Multi steepest descent: one attack trying the l-inf, l2 and l1 step at every iteration,
    keeping per example the highest loss; reports which step was taken (paper Fig. 3 right)."""
    name, norms, attack_method, one_norm_per_batch = 'msd', NORMS, 'pgd', False
    accepts_loss = False   # its own attack picks steps by the cross-entropy
    stat_names = tuple(f'step_{n}' for n in NORMS)

    @property
    def robust_keys(self):
        return ('union',)

    def set_epoch(self, epoch):
        self._steps = {n: 0 for n in self.norms}

    def perturb(self, settings, model, x, y):
        x_adv, correct, chosen = settings.msd(model, x, y, self.norms)
        if not hasattr(self, '_steps'):
            self.set_epoch(0)
        for norm, count in chosen.items():
            self._steps[norm] += count
        return AdversarialBatch(x_adv, y, {'union': correct})

    def state_dict(self):
        return {'steps': dict(getattr(self, '_steps', {n: 0 for n in self.norms}))}

    def load_state_dict(self, state):
        self._steps = dict(state['steps'])

    def stats(self):
        steps = getattr(self, '_steps', {n: 0 for n in self.norms})
        counts = all_reduce_sum(torch.tensor([float(steps[n]) for n in self.norms])).tolist()
        total = max(sum(counts), 1)
        return {f'step_{n}': c / total for n, c in zip(self.norms, counts)}
