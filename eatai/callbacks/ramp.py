"""RAMP (Jiang & Singh, NeurIPS 2024) as a strategy: both norms of a key pair attacked per batch,
MAX over the pair plus a KL term pulling the r-predictions toward the q-ones (../shared/paper/ramp-notes.md)."""
from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F

from .._utils.dist import all_reduce_sum
from ..threats import NORMS, canonical_norm
from .strategies import EAT, AdversarialBatch, Strategy

__all__ = ['RAMP', 'EATPair', 'ramp_loss']


def ramp_loss(out_q: torch.Tensor, out_r: torch.Tensor, y: torch.Tensor, lam: float):
    """RAMP's loss from the training outputs at x_q and x_r (both (B, K)) and labels y (B,).

    L_max: mean over the batch of the larger of the two per-example cross-entropies;
    L_KL: KL(p_q || p_r) averaged over the examples whose x_q is classified correctly (0 if none).
    Returns (L_max + lam * L_KL, winner (B,) 0 for q / 1 for r, L_KL detached).
    """
    out_q, out_r = out_q.float(), out_r.float()
    ce = torch.stack([F.cross_entropy(out_q, y, reduction='none'), F.cross_entropy(out_r, y, reduction='none')])
    worst, winner = ce.max(dim=0)                                                       # (B,), (B,)
    log_q, log_r = F.log_softmax(out_q, dim=1), F.log_softmax(out_r, dim=1)
    kl = (log_q.exp() * (log_q - log_r)).sum(dim=1)                                     # (B,)
    correct = (out_q.argmax(dim=1) == y).float()
    l_kl = (kl * correct).sum() / correct.sum().clamp(min=1)   # n_c = 0: the sum is 0, so is the term
    return worst.mean() + lam * l_kl, winner, l_kl.detach()


def _check_lam(lam) -> None:
    if lam is None:
        return
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or math.isnan(lam) or math.isinf(lam) or lam < 0:
        raise ValueError(f"RAMP needs lam >= 0 (finite; the paper: 5 from scratch, 0.5 fine-tuning), got {lam!r}")


def _check_pair(pair) -> tuple:
    if isinstance(pair, str) or len(pair) != 2:
        raise ValueError(f"pair must name two norms, e.g. ('linf', 'l1'), got {pair!r}")
    q, r = (canonical_norm(n) for n in pair)   # unknown names: ValueError listing NORMS
    if q == r:
        raise ValueError(f"pair must name two different norms of {', '.join(NORMS)}, got {pair!r}")
    return q, r


class _RampLoss:
    """What RAMP and EATPair share: lam with its per-recipe default, and the running KL term."""
    LAM_SCRATCH, LAM_FINETUNE = 5.0, 0.5

    @property
    def lam_value(self) -> float:
        """The lam in use: the given one, or the recipe's default."""
        return self.default_lam if self.lam is None else float(self.lam)

    def set_mode(self, finetune):
        self.default_lam = self.LAM_FINETUNE if finetune else self.LAM_SCRATCH

    def _record_kl(self, l_kl: torch.Tensor) -> None:
        # summed on the device in float64, from the host's sum, and read back with the statistics:
        # the same running sum as before, without a host sync per batch
        if self._kl_pending is None:
            self._kl_pending = torch.full((), self._kl_sum, dtype=torch.float64, device=l_kl.device)
        self._kl_pending = self._kl_pending + l_kl.double()
        self._kl_batches += 1

    def _read_kl(self) -> None:
        """Bring the KL sum kept on the device back to `_kl_sum` (one host sync)."""
        if self._kl_pending is not None:
            self._kl_sum, self._kl_pending = self._kl_pending.item(), None


class RAMP(_RampLoss, Strategy):
    """RAMP: APGD in both norms of `pair` = (q, r) for every batch, and the training loss
    L_max + lam * KL(p_q || p_r) (`ramp_loss`), on the points of both norms in one forward of 2B.

    lam=None takes the paper's value for the recipe: 5 with `fit_adversarial` (from scratch),
    0.5 with `finetune_adversarial` (the released fine-tuning script uses 1.5; pass it to match).
    The pair defaults to (l-inf, l1), the key trade-off pair for CIFAR-10's radii. Per epoch it
    reports how often each norm gave the higher training loss (`max_<norm>`) and the mean KL term (`kl`).
    Gradient projection, the rest of RAMP from scratch, is a separate callback.
    """
    name, attack_method, one_norm_per_batch, accepts_loss = 'ramp', 'apgd', False, False

    def __init__(self, lam: float | None = None, pair=('linf', 'l1')):
        _check_lam(lam)
        self.pair = _check_pair(pair)
        self.norms = self.pair
        self.stat_names = tuple(f'max_{n}' for n in self.pair) + ('kl',)
        self.lam, self.default_lam = lam, self.LAM_SCRATCH
        self.set_epoch(0)

    @property
    def robust_keys(self):
        return self.pair + ('union',)

    def set_epoch(self, epoch):
        self._wins, self._seen, self._wins_pending = torch.zeros(2, dtype=torch.long), 0, None
        self._kl_sum, self._kl_batches, self._kl_pending = 0.0, 0, None

    def perturb(self, settings, model, x, y):
        q, r = self.pair
        x_q, correct_q = settings.run(model, x, y, q, self.attack_method)
        x_r, correct_r = settings.run(model, x, y, r, self.attack_method)
        robust = {q: correct_q, r: correct_r, 'union': correct_q & correct_r}
        return AdversarialBatch(torch.cat([x_q, x_r]), torch.cat([y, y]), robust, loss_fn=partial(self._loss, y=y))

    def _loss(self, pred, y):
        b = len(y)
        loss, winner, l_kl = ramp_loss(pred[:b], pred[b:], y, self.lam_value)
        wins = torch.stack([(winner == 0).sum(), (winner == 1).sum()])   # a bincount would sync on a GPU
        self._wins_pending = wins if self._wins_pending is None else self._wins_pending + wins
        self._seen += b
        self._record_kl(l_kl)
        return loss

    def _read(self) -> None:
        """Bring the counts kept on the device back to the host (one host sync, per epoch or save)."""
        if self._wins_pending is not None:
            self._wins, self._wins_pending = self._wins + self._wins_pending.cpu(), None
        self._read_kl()

    def stats(self):
        self._read()
        local = torch.cat([self._wins.double(), torch.tensor([float(self._seen), self._kl_sum, float(self._kl_batches)])])
        total = all_reduce_sum(local).tolist()
        seen, kl_sum, kl_batches = total[2:]
        out = {f'max_{n}': w / seen if seen else math.nan for n, w in zip(self.pair, total[:2])}
        out['kl'] = kl_sum / kl_batches if kl_batches else math.nan
        return out

    def state_dict(self):
        self._read()
        return {'lam': self.lam, 'pair': self.pair, 'default_lam': self.default_lam, 'wins': self._wins.clone(),
                'seen': self._seen, 'kl_sum': self._kl_sum, 'kl_batches': self._kl_batches}

    def load_state_dict(self, state):
        self.__init__(state['lam'], state['pair'])
        self.default_lam = state['default_lam']
        self._wins, self._seen = state['wins'].clone(), state['seen']
        self._kl_sum, self._kl_batches = state['kl_sum'], state['kl_batches']

    def __repr__(self):
        return f"RAMP(lam={self.lam}, pair={self.pair})"


class EATPair(_RampLoss, EAT):
    """E-AT with a RAMP-style pairing term against a cheap partner (eatai's own variant, not from a paper).

    Per batch: the norm p of {l-inf, l1} drawn as E-AT draws it (eq. 6) and attacked with the full
    APGD, as in E-AT; the other norm attacked with only `partner_iter` APGD steps; the training
    loss is RAMP's (`ramp_loss`: MAX over the two points plus lam * KL(p_linf || p_l1) on the
    examples whose l-inf point is classified correctly) on both, in one forward of 2B. The cost is
    E-AT's plus `partner_iter` attack steps and a training step on B more points; E-AT's
    statistics (and so its draws) come from the full attack only, the partner's flags being weak.
    lam=None: RAMP's defaults (5 from scratch, 0.5 fine-tuning).
    """
    name, accepts_loss = 'eat-pair', False

    def __init__(self, lam: float | None = None, partner_iter: int = 1, beta: float | None = None,
                 seed: int | None = None):
        _check_lam(lam)
        if isinstance(partner_iter, bool) or not isinstance(partner_iter, int) or partner_iter < 1:
            raise ValueError(f"partner_iter must be an integer >= 1 (APGD steps of the partner attack), got {partner_iter!r}")
        super().__init__(beta, seed)
        self.lam, self.partner_iter, self.default_lam = lam, partner_iter, self.LAM_SCRATCH
        self.stat_names = tuple(f'prob_{n}' for n in self.norms) + ('kl',)
        self._kl_sum, self._kl_batches, self._kl_pending = 0.0, 0, None

    def set_epoch(self, epoch):
        self._kl_sum, self._kl_batches, self._kl_pending = 0.0, 0, None

    def perturb(self, settings, model, x, y):
        norm = self.choose()
        partner = self.norms[1] if norm == self.norms[0] else self.norms[0]
        x_full, correct = settings.run(model, x, y, norm, self.attack_method)
        self.observe(norm, correct)
        cheap = replace(settings, n_iter={**settings.n_iter, partner: self.partner_iter})
        x_partner, _ = cheap.run(model, x, y, partner, self.attack_method)
        points = {norm: x_full, partner: x_partner}
        return AdversarialBatch(torch.cat([points['linf'], points['l1']]), torch.cat([y, y]), {norm: correct}, norm,
                                loss_fn=partial(self._loss, y=y))

    def _loss(self, pred, y):
        b = len(y)
        loss, _, l_kl = ramp_loss(pred[:b], pred[b:], y, self.lam_value)
        self._record_kl(l_kl)
        return loss

    def stats(self):
        self._read_kl()
        kl_sum, kl_batches = all_reduce_sum(torch.tensor([self._kl_sum, float(self._kl_batches)])).tolist()
        return {**super().stats(), 'kl': kl_sum / kl_batches if kl_batches else math.nan}

    def state_dict(self):
        self._read_kl()
        return {**super().state_dict(), 'lam': self.lam, 'partner_iter': self.partner_iter,
                'default_lam': self.default_lam, 'kl_sum': self._kl_sum, 'kl_batches': self._kl_batches}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.lam, self.partner_iter, self.default_lam = state['lam'], state['partner_iter'], state['default_lam']
        self._kl_sum, self._kl_batches, self._kl_pending = state['kl_sum'], state['kl_batches'], None

    def __repr__(self):
        return f"EATPair(lam={self.lam}, partner_iter={self.partner_iter})"
