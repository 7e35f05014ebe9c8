"""Threat models as step/project objects: the l_p ball of radius eps around x, within [0,1].

Each ball knows its steepest-ascent direction, its projection and its random start, so
attack loops never branch on the norm. `make_ball(norm, eps)` builds one by name.
"""
from __future__ import annotations

import torch

from ..threats import NORMS, ThreatModel
from ._shapes import at_least_fp32, per_example
from .projection import l1_box_projection
from .schedules import OscillationSchedule, SparsitySchedule

__all__ = ['Ball', 'LinfBall', 'L2Ball', 'L1Ball', 'make_ball', 'lp_norm']

_TINY = 1e-12



def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm of `delta` (B, ...) -> (B,), computed in float32 or wider."""
    flat = at_least_fp32(delta.reshape(delta.shape[0], -1))
    if norm == 'linf':
        return flat.abs().amax(dim=1)
    if norm == 'l2':
        return flat.norm(dim=1)
    if norm == 'l1':
        return flat.abs().sum(dim=1)
    raise ValueError(f"unknown norm {norm!r}: expected one of {', '.join(NORMS)}")


class Ball:
    """The set {x_adv : ||x_adv - x||_p <= eps, 0 <= x_adv <= 1}."""
    norm: str = ''
    step_scale: float = 1.0   # APGD's initial step size, in units of eps
    uses_momentum: bool = True

    def __init__(self, eps: float):
        self.eps = ThreatModel(self.norm, eps).eps

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g})"

    def direction(self, grad: torch.Tensor, sparsity: torch.Tensor | None = None) -> torch.Tensor:
        """Steepest-ascent direction of unit dual norm for the gradient `grad` (B, ...)."""
        raise NotImplementedError

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """The point of the ball (around x, within [0,1]) that is closest to, or replaces, `x_adv`."""
        raise NotImplementedError

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random point of the ball around x."""
        raise NotImplementedError

    def step_schedule(self, n_iter: int, config):
        """APGD's step-size rule for this ball (config: an `APGDConfig`)."""
        return OscillationSchedule(n_iter, config.rho)

    def contains(self, x: torch.Tensor, x_adv: torch.Tensor, rtol: float = 1e-5) -> torch.Tensor:
        """(B,) bool: x_adv within the ball (up to float error) and within [0,1]."""
        in_ball = lp_norm(x_adv - x, self.norm) <= self.eps * (1 + rtol) + 1e-7
        flat = x_adv.reshape(x_adv.shape[0], -1)
        return in_ball & (flat.amin(dim=1) >= 0) & (flat.amax(dim=1) <= 1)


class LinfBall(Ball):
    """l-inf ball: sign steps; the projection is a coordinate-wise clip."""
    norm, step_scale = 'linf', 2.0

    def direction(self, grad, sparsity=None):
        return grad.sign()

    def project(self, x, x_adv):
        return (x + (x_adv - x).clamp(-self.eps, self.eps)).clamp(0, 1)

    def random_start(self, x, generator=None):
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.project(x, x + self.eps * (2 * noise - 1))


class L2Ball(Ball):
    """l2 ball: normalised-gradient steps; rescale onto the ball, then clip to the box.

    Clipping after rescaling only moves coordinates towards x, so the result lies in both
    sets (as in AutoAttack; not the exact Euclidean projection onto the intersection).
    """
    norm, step_scale = 'l2', 2.0

    def direction(self, grad, sparsity=None):
        return grad / (per_example(lp_norm(grad, 'l2'), grad) + _TINY).to(grad.dtype)

    def project(self, x, x_adv):
        delta = x_adv - x
        norm = per_example(lp_norm(delta, 'l2'), delta).to(delta.dtype)
        scale = (self.eps / (norm + _TINY)).clamp(max=1.0)
        return (x + delta * scale).clamp(0, 1)

    def random_start(self, x, generator=None):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.project(x, x + self.eps * self.direction(noise))


class L1Ball(Ball):
    """l1 ball (APGD-l1, "Mind the box"): sparse sign steps on the top-k gradient
    coordinates, exact projection onto the l1 ball intersected with the box, no momentum."""
    norm, step_scale, uses_momentum = 'l1', 1.0, False

    def direction(self, grad, sparsity=None):
        flat = grad.reshape(grad.shape[0], -1)
        d = flat.shape[1]
        if sparsity is None:
            sparsity = flat.new_full((flat.shape[0],), 1.0)
        magnitude = flat.abs()
        # keep the coordinates whose |grad| reaches the (1 - sparsity) quantile of the example:
        # the n_keep-th largest, found with topk rather than a full sort
        n_keep = d - ((1 - sparsity) * d).clamp(0, d - 1).long()             # (B,) >= 1
        largest = magnitude.topk(int(n_keep.max()), dim=1).values
        threshold = largest.gather(1, (n_keep - 1)[:, None])
        step = flat.sign() * (magnitude >= threshold)
        n_kept = step.abs().sum(dim=1, keepdim=True).clamp(min=1)  # exact 1/k: no near-ties for the projection
        return (step / n_kept).reshape(grad.shape)

    def project(self, x, x_adv):
        return x + l1_box_projection(x, x_adv - x, self.eps)

    def random_start(self, x, generator=None):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.project(x, x + noise)

    def step_schedule(self, n_iter, config):
        return SparsitySchedule(n_iter, config.l1_sparsity)


_BALLS = {ball.norm: ball for ball in (LinfBall, L2Ball, L1Ball)}


def make_ball(norm: str, eps: float) -> Ball:
    """The ball object of threat model (`norm`, `eps`)."""
    tm = ThreatModel(norm, eps)
    return _BALLS[tm.norm](tm.eps)
