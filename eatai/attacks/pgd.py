"""PGD with fixed steps, as the paper's retrained baselines use it (App. A): l-inf step eps/4,
l2 step eps/3, and SLIDE for l1 (Tramèr & Boneh 2019: sign steps on the top 1% of gradient
coordinates, ignoring coordinates that the [0,1] box blocks)."""
from __future__ import annotations

import torch
from torch import nn

from ._autograd import input_grad
from .apgd import clean_reference
from ._shapes import per_example
from .balls import Ball, compact_width, make_ball, run_compacted
from .guards import check_batch, check_labels, eval_mode
from .losses import get_loss

__all__ = ['PGD_STEP', 'SLIDE_PERCENTILE', 'steepest_direction', 'pgd']

PGD_STEP = {'linf': 1 / 4, 'l2': 1 / 3, 'l1': 1 / 10}  # step size in units of eps (l1: our choice, eps/10)
SLIDE_PERCENTILE = 99.0                                   # SLIDE keeps |grad| above this percentile



def steepest_direction(ball: Ball, grad: torch.Tensor, x_adv: torch.Tensor,
                       percentile: float = SLIDE_PERCENTILE) -> torch.Tensor:
    """The baselines' ascent direction in `ball`: sign (l-inf), normalised gradient (l2), or
    SLIDE's sparse sign step (l1), which skips coordinates the box would clip anyway."""
    if ball.norm != 'l1':
        return ball.direction(grad)
    blocked = ((x_adv <= 0) & (grad < 0)) | ((x_adv >= 1) & (grad > 0))
    grad = grad.masked_fill(blocked, 0)
    return ball.direction(grad, 1 - percentile / 100)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, n_iter: int = 10,
        step_size: float | None = None, random_start: bool = False, keep: str = 'last',
        return_loss: bool = False, generator: torch.Generator | None = None, grad_scale: float = 1.0,
        loss: str = 'ce', reference: torch.Tensor | None = None):
    """Projected gradient ascent on the cross-entropy in the `norm` ball (radius eps) within [0,1].

    step_size defaults to `PGD_STEP[norm] * eps`. keep: 'last' iterate (standard PGD) or the
    highest-'loss' one. grad_scale: see `input_grad`. loss: 'ce' or 'kl' (TRADES' attack, away from
    `reference` logits, by default the eval-mode logits at x; needs random_start).
    Returns (x_adv, correct[, loss]) like `apgd`: correct is True where the
    example was classified correctly at every iterate; n_iter + 1 forwards, n_iter backwards.
    """
    if keep not in ('last', 'loss'):
        raise ValueError(f"keep must be 'last' or 'loss', got {keep!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be an integer >= 1, got {n_iter!r}")
    ball = make_ball(norm, eps)
    step = PGD_STEP[ball.norm] * ball.eps if step_size is None else float(step_size)
    if not step > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if loss not in ('ce', 'kl'):
        raise ValueError(f"pgd's loss must be 'ce' or 'kl', got {loss!r}")
    if loss == 'kl' and not random_start:
        raise ValueError("loss 'kl' needs random_start=True: its gradient is zero at the clean point")
    loss_fn = get_loss(loss)[0]
    y_max = check_batch(x, y)
    if x.shape[0] == 0:
        empty = (x.detach().clone(), torch.zeros(0, dtype=torch.bool, device=x.device))
        return empty + (x.new_zeros(0),) if return_loss else empty
    x, y = x.detach(), y.detach().long()

    def attack(ball):   # `ball`, its l1 computations compacted (see `run_compacted`)
        x_adv = ball.random_start(x, generator) if random_start else x.clone()
        best, loss_best, correct = x_adv, None, None
        for i in range(n_iter + 1):
            x_adv = x_adv.detach().requires_grad_(i < n_iter)
            with torch.set_grad_enabled(i < n_iter):
                logits = model(x_adv)
                if i == 0:
                    check_labels(y, logits, y_max)
                value = loss_fn(logits, y, reference)
            ok = logits.detach().argmax(dim=1) == y
            correct = ok if correct is None else correct & ok
            loss_now = value.detach()
            if loss_best is None:
                best, loss_best = x_adv.detach(), loss_now
            else:
                better = loss_now > loss_best if keep == 'loss' else torch.ones_like(ok)
                best = torch.where(per_example(better, x), x_adv.detach(), best)
                loss_best = torch.where(better, loss_now, loss_best)
            if i == n_iter:
                break
            grad = input_grad(value, x_adv, grad_scale)
            with torch.no_grad():
                x_adv = ball.project(x, x_adv + step * steepest_direction(ball, grad, x_adv))
        return best, correct, loss_best

    with eval_mode(model), torch.enable_grad():
        if loss == 'kl':
            reference = clean_reference(model, x) if reference is None else reference.detach()
        # no host sync in the loop; one after it for SLIDE (l1), see `run_compacted`
        width = compact_width(x.shape[1:].numel(), 1 - SLIDE_PERCENTILE / 100, ball.eps)
        best, correct, loss_best = run_compacted(ball, width, attack, x.device, () if generator is None else (generator,))
    return (best, correct, loss_best) if return_loss else (best, correct)
