"""Multi steepest descent (MSD, Maini et al. 2020): one attack over the union of threat models.

At every iteration one gradient is computed at the current point, and the steepest-ascent
step of each norm is tried from there, each projected onto its own ball; per example the
step with the highest loss is kept. Cost per iteration: one forward and backward, plus one
forward per norm. As in the paper (Sec. 5.1), the l1 step is SLIDE's, not MSD's own.
"""
from __future__ import annotations

import torch
from torch import nn

from ._autograd import input_grad
from ._shapes import per_example
from .balls import make_ball
from .guards import check_batch, check_labels, eval_mode
from .losses import ce_loss
from .pgd import PGD_STEP, steepest_direction

__all__ = ['msd']



def msd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: dict, n_iter: int = 10, step_sizes: dict | None = None,
        return_loss: bool = False, grad_scale: float = 1.0):
    """MSD over the threat models `eps` = {norm: radius}, starting at x.

    Returns (x_adv, correct, chosen[, loss]): the highest-loss iterate, a (B,) bool tensor True
    where the example was classified correctly at every iterate, and `chosen`, a dict
    norm -> number of (example, iteration) steps that norm's candidate won (paper Fig. 3 right).
    """
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be an integer >= 1, got {n_iter!r}")
    if not eps:
        raise ValueError("eps must name at least one threat model, e.g. {'linf': 8/255, 'l1': 12}")
    balls = [make_ball(norm, e) for norm, e in eps.items()]
    steps = [(step_sizes or {}).get(b.norm, PGD_STEP[b.norm] * b.eps) for b in balls]
    y_max = check_batch(x, y)
    x, y = x.detach(), y.detach().long()
    chosen = torch.zeros(len(balls), dtype=torch.long, device=x.device)
    norms = torch.arange(len(balls), device=x.device)
    # No host sync in the loop: SLIDE's top-k has a width known in advance, and the l1 projection
    # takes every coordinate (a candidate from an l-inf or l2 step is dense anyway).
    with eval_mode(model), torch.enable_grad():
        x_adv = x.clone().requires_grad_(True)
        logits = model(x_adv)
        check_labels(y, logits, y_max)
        loss = ce_loss(logits, y)
        correct = logits.detach().argmax(dim=1) == y
        best, loss_best = x.clone(), loss.detach()
        for i in range(n_iter):
            grad = input_grad(loss, x_adv, grad_scale)
            with torch.no_grad():
                candidates = torch.stack([b.project(x, x_adv + s * steepest_direction(b, grad, x_adv))
                                          for b, s in zip(balls, steps)])                # (P, B, ...)
                outputs = [model(c) for c in candidates]
                losses = torch.stack([ce_loss(o, y) for o in outputs])                   # (P, B)
                pick = losses.argmax(dim=0)                                               # (B,)
                rows = torch.arange(x.shape[0], device=x.device)
                x_new, loss_new = candidates[pick, rows], losses[pick, rows]
                pred = torch.stack([o.argmax(dim=1) for o in outputs])[pick, rows]
                correct &= pred == y
                chosen += (pick[:, None] == norms).sum(dim=0)   # a bincount without its host sync
                better = loss_new > loss_best
                best = torch.where(per_example(better, x), x_new, best)
                loss_best = torch.where(better, loss_new, loss_best)
            if i < n_iter - 1:   # the gradient at the last iterate is never used
                x_adv = x_new.detach().requires_grad_(True)
                loss = ce_loss(model(x_adv), y)
    counts = {b.norm: int(c) for b, c in zip(balls, chosen.tolist())}
    return (best, correct, counts, loss_best) if return_loss else (best, correct, counts)
