"""Auto-PGD (Croce & Hein 2020) for l-inf and l2, and APGD-l1 ("Mind the box", 2021).

`apgd` with its defaults is the training attack of E-AT (paper, Appendix A): 10 iterations,
no random start, momentum 0.75, initial l1 sparsity 0.05. `EVALUATION` holds the
evaluation budget (100 iterations, random start, l1 sparsity 0.2, misclassified points kept)
and `apgd_targeted` runs APGD-T, the targeted DLR attack over the top target classes.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from ._autograd import input_grad
from ._shapes import per_example
from .balls import Ball, compact_width, make_ball, run_compacted
from .guards import check_batch, check_labels, eval_mode, warn_zero_count, zero_gradients
from .losses import get_loss
from .schedules import AttackState

__all__ = ['APGDConfig', 'EVALUATION', 'apgd', 'apgd_targeted', 'clean_reference']

_KEEP = ('loss', 'misclassified')


@dataclass(frozen=True)
class APGDConfig:
    """Settings of one APGD attack. Defaults: the training attack of the paper."""
    n_iter: int = 10
    loss: str = 'ce'               # 'ce', 'dlr', 'dlr-targeted', 'ce-targeted', 'kl' (TRADES)
    random_start: bool = False
    n_restarts: int = 1
    momentum: float = 0.75         # weight of the new step; 1 - momentum goes to the last one
    rho: float = 0.75              # l-inf/l2: halve the step if the loss rose in <= rho of the steps
    l1_sparsity: float = 0.05      # l1: initial fraction of coordinates moved per step
    keep: str = 'loss'             # 'loss': highest-loss iterate; 'misclassified': prefer a misclassified one
    seed: int | None = None        # seeds the random start
    grad_scale: float = 1.0        # loss scale for the input gradient (fp16 autocast: e.g. 1024)

    def __post_init__(self):
        if isinstance(self.n_iter, bool) or not isinstance(self.n_iter, int) or self.n_iter < 1:
            raise ValueError(f"n_iter must be an integer >= 1, got {self.n_iter!r}")
        if isinstance(self.n_restarts, bool) or not isinstance(self.n_restarts, int) or self.n_restarts < 1:
            raise ValueError(f"n_restarts must be an integer >= 1, got {self.n_restarts!r}")
        if self.n_restarts > 1 and not self.random_start:
            raise ValueError("n_restarts > 1 needs random_start=True: without it every restart is identical")
        get_loss(self.loss)
        for name in ('momentum', 'rho', 'l1_sparsity'):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if not self.grad_scale > 0:
            raise ValueError(f"grad_scale must be > 0, got {self.grad_scale!r}")
        if self.keep not in _KEEP:
            raise ValueError(f"keep must be one of {_KEEP}, got {self.keep!r}")

    @classmethod
    def from_options(cls, **options) -> 'APGDConfig':
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown APGD option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)


# AutoAttack's budget for APGD-CE / APGD-T (Croce & Hein 2020; l1: "Mind the box").
EVALUATION = dict(n_iter=100, random_start=True, l1_sparsity=0.2, keep='misclassified')



@dataclass
class _RunResult:
    x_best: torch.Tensor           # (B, ...) highest-loss iterate
    loss_best: torch.Tensor        # (B,)
    correct: torch.Tensor          # (B,) bool, correct at every iterate
    x_misclassified: torch.Tensor | None  # (B, ...) last misclassified iterate (x_best where none);
                                          # None unless keep='misclassified'
    n_zero_grad: torch.Tensor | None = None  # 0-d: examples with a zero gradient at the start (DLR losses)

    def output(self, keep: str) -> torch.Tensor:
        return self.x_best if keep == 'loss' else self.x_misclassified


def _single_run(model, x, y, ball: Ball, cfg: APGDConfig, y_target, generator, y_max) -> _RunResult:
    """One APGD run; x, y already checked (y_max: the largest label); model in eval mode; grad
    enabled. No host sync: the loop never waits for the device."""
    loss_fn = get_loss(cfg.loss)[0]

    def evaluate(x_adv, need_grad=True, check=False):
        x_adv = x_adv.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            logits = model(x_adv)
            if check:
                check_labels(y, logits, y_max)
            loss = loss_fn(logits, y, y_target)
        # autograd.grad w.r.t. the input only: parameter .grad stays untouched
        grad = input_grad(loss, x_adv, cfg.grad_scale) if need_grad else None
        return logits.detach(), loss.detach(), grad

    x_adv = ball.random_start(x, generator) if cfg.random_start else x.clone()
    logits, loss, grad = evaluate(x_adv, check=True)
    # as AutoAttack: a saturated cross-entropy has zero gradients legitimately; counted here, warned at the end
    n_zero_grad = zero_gradients(grad) if cfg.loss.startswith('dlr') else None
    correct = logits.argmax(dim=1) == y
    track_misclassified = cfg.keep == 'misclassified'   # training attacks only need the best point
    x_misclassified = x_adv.clone() if track_misclassified else None
    base_step = ball.step_scale * ball.eps
    state = AttackState(x_adv=x_adv, grad=grad, loss=loss, x_best=x_adv.clone(), grad_best=grad.clone(),
                        loss_best=loss.clone(),
                        step_size=torch.full((x.shape[0],) + (1,) * (x.dim() - 1), base_step,
                                             device=x.device, dtype=x.dtype))
    schedule = ball.step_schedule(cfg.n_iter, cfg)
    schedule.start(x, state, base_step)
    x_prev = state.x_adv
    for i in range(cfg.n_iter):
        with torch.no_grad():
            x_new = ball.project(x, state.x_adv + state.step_size * ball.direction(state.grad, state.sparsity))
            if ball.uses_momentum and i > 0:  # the first step has no previous step to carry on
                a = cfg.momentum
                x_new = ball.project(x, state.x_adv + a * (x_new - state.x_adv) + (1 - a) * (state.x_adv - x_prev))
            x_prev, state.x_adv = state.x_adv, x_new
        last = i == cfg.n_iter - 1
        logits, state.loss, grad = evaluate(state.x_adv, need_grad=not last)  # no backward after the last step
        if grad is not None:
            state.grad = grad
        wrong = logits.argmax(dim=1) != y
        correct &= ~wrong
        if track_misclassified:
            x_misclassified = torch.where(per_example(wrong, x), state.x_adv, x_misclassified)
        improved = state.loss > state.loss_best
        state.x_best = torch.where(per_example(improved, x), state.x_adv, state.x_best)
        state.grad_best = torch.where(per_example(improved, x), state.grad, state.grad_best)
        state.loss_best = torch.where(improved, state.loss, state.loss_best)
        if not last:
            schedule.update(state)
    if track_misclassified:
        x_misclassified = torch.where(per_example(correct, x), state.x_best, x_misclassified)
    return _RunResult(state.x_best, state.loss_best, correct, x_misclassified, n_zero_grad)


def _generator(seed, device):
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _run_restarts(model, x, y, ball, cfg, y_target, y_max):
    """The runs of one APGD call: (x_adv, correct, loss_best, zero-gradient count of the first run)."""
    generator = _generator(cfg.seed, x.device)
    out = _single_run(model, x, y, ball, cfg, y_target, generator, y_max)
    x_adv, loss_best, correct = out.output(cfg.keep), out.loss_best, out.correct
    for _ in range(cfg.n_restarts - 1):
        # highest loss: every example may still improve; misclassified: only robust ones need more
        idx = torch.arange(x.shape[0], device=x.device) if cfg.keep == 'loss' else correct.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        run = _single_run(model, x[idx], y[idx], ball, cfg, None if y_target is None else y_target[idx], generator,
                          y_max)
        better = run.loss_best > loss_best[idx] if cfg.keep == 'loss' else ~run.correct
        x_adv[idx] = torch.where(per_example(better, x), run.output(cfg.keep), x_adv[idx])
        loss_best[idx] = torch.where(better, run.loss_best, loss_best[idx])
        correct[idx] &= run.correct
    return x_adv, correct, loss_best, out.n_zero_grad


def _width(x: torch.Tensor, ball: Ball, cfg: APGDConfig) -> int:
    """The l1 computations' width for inputs like x (see `compact_width`)."""
    return compact_width(x.shape[1:].numel(), cfg.l1_sparsity, ball.eps)


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, n_iter: int = 10,
         *, y_target: torch.Tensor | None = None, reference: torch.Tensor | None = None, return_loss: bool = False,
         **options):
    """APGD in the `norm` ball of radius `eps` around x, intersected with [0,1].

    x: (B, ...) inputs in [0,1]; y: (B,) labels; norm: 'linf', 'l2' or 'l1'.
    options: the fields of `APGDConfig` (defaults: the paper's training attack).
    reference: with loss='kl' (TRADES), the (B, K) logits the prediction is pushed away from;
    by default the model's own eval-mode logits at x.
    Returns (x_adv, correct): the highest-loss point per example (or, with
    keep='misclassified', a misclassified one where found) and a (B,) bool tensor, True where
    the example was classified correctly at every iterate, start included. The flag comes
    from the attack's own forward passes: n_iter + 1 forwards and n_iter backwards per run.
    With `return_loss` (keep='loss' only) also the (B,) attack loss at x_adv.
    The model's train/eval flags are restored, parameter gradients and x are left untouched.
    The host waits for the device once per call (twice for l1, see `run_compacted`; once more
    for a DLR loss's zero-gradient check), never inside the loop.
    """
    cfg = APGDConfig.from_options(n_iter=n_iter, **options)
    ball = make_ball(norm, eps)
    y_max = check_batch(x, y)
    needs_target = get_loss(cfg.loss)[1] and cfg.loss != 'kl'
    if needs_target and y_target is None:
        raise ValueError(f"loss {cfg.loss!r} needs y_target")
    if return_loss and cfg.keep != 'loss':
        raise ValueError("return_loss needs keep='loss': the loss is tracked at the highest-loss point")
    if cfg.loss == 'kl' and not cfg.random_start:
        raise ValueError("loss 'kl' needs random_start=True: its gradient is zero at the clean point")
    if x.shape[0] == 0:
        empty = (x.detach().clone(), torch.zeros(0, dtype=torch.bool, device=x.device))
        return empty + (x.new_zeros(0),) if return_loss else empty
    x, y = x.detach(), y.detach().long()
    y_target = None if y_target is None else y_target.detach().long()
    with eval_mode(model), torch.enable_grad():
        if cfg.loss == 'kl':   # the loss's third argument is the reference output, not a class
            y_target = clean_reference(model, x) if reference is None else reference.detach()
        x_adv, correct, loss, n_zero = run_compacted(
            ball, _width(x, ball, cfg), lambda b: _run_restarts(model, x, y, b, cfg, y_target, y_max), x.device)
    if n_zero is not None:
        warn_zero_count(n_zero, len(x))
    return (x_adv, correct, loss) if return_loss else (x_adv, correct)


def clean_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits at x without gradients (the caller sets eval mode): the KL attack's reference."""
    with torch.no_grad():
        return model(x).detach()


def apgd_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                  n_iter: int = 100, n_target_classes: int = 9, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD-T: targeted DLR attacks towards the 2nd, 3rd, ... most likely clean classes, each
    run on the examples still robust. Defaults: AutoAttack's evaluation budget.

    Returns (x_adv, correct): a misclassified point where one was found (x itself where the
    example is robust or already misclassified clean) and the per-example robustness flag.
    Host syncs: one per target class (which examples are still robust) and three per call.
    """
    options = {**EVALUATION, 'loss': 'dlr-targeted', **options, 'n_iter': n_iter, 'keep': 'misclassified'}
    y_max = check_batch(x, y)
    if n_target_classes < 1:
        raise ValueError(f"n_target_classes must be >= 1, got {n_target_classes}")
    if x.shape[0] == 0:
        return x.detach().clone(), torch.zeros(0, dtype=torch.bool, device=x.device)
    x, y = x.detach(), y.detach().long()
    with eval_mode(model), torch.no_grad():
        logits = model(x)
    check_labels(y, logits, y_max)
    n_classes = logits.shape[1]
    min_classes = get_loss(options['loss'])[2]
    if n_classes < min_classes:
        raise ValueError(f"loss {options['loss']!r} needs at least {min_classes} classes, the model has {n_classes}")
    cfg = APGDConfig.from_options(**options)
    ball = make_ball(norm, eps)
    if cfg.loss == 'kl' and not cfg.random_start:
        raise ValueError("loss 'kl' needs random_start=True: its gradient is zero at the clean point")
    ranking = logits.argsort(dim=1, descending=True)       # (B, K)

    def attack(b):
        correct = ranking[:, 0] == y
        x_adv, n_zero = x.clone(), None
        for rank in range(1, min(n_target_classes, n_classes - 1) + 1):
            idx = correct.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            target = clean_reference(model, x[idx]) if cfg.loss == 'kl' else ranking[idx, rank]
            x_r, c_r, _, zeros = _run_restarts(model, x[idx], y[idx], b, cfg, target, y_max)
            x_adv[idx] = torch.where(per_example(c_r, x), x_adv[idx], x_r)
            correct[idx] = c_r
            n_zero = (zeros, len(idx)) if n_zero is None else n_zero   # the first target's, as warned
        return x_adv, correct, n_zero

    with eval_mode(model), torch.enable_grad():
        x_adv, correct, n_zero = run_compacted(ball, _width(x, ball, cfg), attack, x.device)
    if n_zero is not None and n_zero[0] is not None:
        warn_zero_count(*n_zero)
    return x_adv, correct
