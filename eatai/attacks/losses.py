"""Per-example attack losses on logits (B, K) and labels (B,), to be maximised.

The third argument is the target class (B,) of the targeted losses, or for 'kl' the reference
logits (B, K) of the clean inputs (TRADES' attack)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._shapes import at_least_fp32

__all__ = ['ce_loss', 'dlr_loss', 'dlr_targeted_loss', 'ce_targeted_loss', 'kl_loss', 'LOSSES', 'get_loss']

_TINY = 1e-12


def ce_loss(logits, y, y_target=None):
    """Cross-entropy of the true class."""
    return F.cross_entropy(at_least_fp32(logits), y, reduction='none')


def dlr_loss(logits, y, y_target=None):
    """Difference of logits ratio (Croce & Hein 2020, eq. 6); scale invariant, needs K >= 3."""
    z = at_least_fp32(logits)
    top = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, y[:, None])[:, 0]
    other = torch.where(top[:, 0] == z_y, top[:, 1], top[:, 0])  # best wrong class
    return -(z_y - other) / (top[:, 0] - top[:, 2] + _TINY)


def dlr_targeted_loss(logits, y, y_target):
    """Targeted DLR (Croce & Hein 2020, eq. 7), pushes towards `y_target`; needs K >= 4."""
    z = at_least_fp32(logits)
    top = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, y[:, None])[:, 0]
    z_t = z.gather(1, y_target[:, None])[:, 0]
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)


def ce_targeted_loss(logits, y, y_target):
    """Negative cross-entropy of the target class."""
    return -F.cross_entropy(at_least_fp32(logits), y_target, reduction='none')


def kl_loss(logits, y, reference):
    """KL(softmax(reference) || softmax(logits)) per example: how far the prediction moved from
    the clean one (TRADES, Zhang et al. 2019); `y` is not used. Zero, with zero gradient, at the
    clean point, so an attack on it needs a random start."""
    log_p = F.log_softmax(at_least_fp32(reference), dim=1)
    log_q = F.log_softmax(at_least_fp32(logits), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


# name -> (loss, whether it needs y_target, minimum number of classes)
LOSSES = {
    'ce': (ce_loss, False, 2),
    'dlr': (dlr_loss, False, 3),
    'dlr-targeted': (dlr_targeted_loss, True, 4),
    'ce-targeted': (ce_targeted_loss, True, 2),
    'kl': (kl_loss, True, 2),   # its "target" is the reference logits, see `apgd(reference=...)`
}


def get_loss(name: str):
    """(loss function, needs_target, min_classes) for a loss name."""
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss {name!r}: expected one of {', '.join(LOSSES)}")
    return LOSSES[name]
