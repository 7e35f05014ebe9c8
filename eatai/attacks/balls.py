"""Threat models as step/project objects: the l_p ball of radius eps around x, within [0,1].

Each ball knows its steepest-ascent direction, its projection and its random start, so
attack loops never branch on the norm. `make_ball(norm, eps)` builds one by name.
"""
from __future__ import annotations

import math

import torch

from ..threats import NORMS, ThreatModel
from ._shapes import at_least_fp32, per_example
from .projection import _project
from .schedules import OscillationSchedule, SparsitySchedule

__all__ = ['Ball', 'LinfBall', 'L2Ball', 'L1Ball', 'make_ball', 'lp_norm', 'compact_width', 'run_compacted']

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

    def compacted(self, width: int | None) -> 'Ball':
        """The ball whose l1 computations use each example's `width` largest coordinates only
        (l-inf and l2 have none: the ball itself)."""
        return self

    def overflowed(self) -> bool:
        """Whether a compacted computation needed more coordinates than it had (never for l-inf, l2)."""
        return False

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
    coordinates, exact projection onto the l1 ball intersected with the box, no momentum.

    `width`: None, every coordinate takes part in the top-k and in the projection's sort; a
    number, only each example's `width` largest (see `compacted`): no host sync either way."""
    norm, step_scale, uses_momentum = 'l1', 1.0, False

    def __init__(self, eps: float, width: int | None = None):
        super().__init__(eps)
        self.width = width
        self.overflow = None   # 0-d bool tensor: some example needed more than `width` coordinates

    def compacted(self, width: int | None) -> 'L1Ball':
        """The same ball computing on `width` coordinates per example, with a fresh overflow flag."""
        return L1Ball(self.eps, width)

    def overflowed(self) -> bool:
        """Whether a result of this ball needed more than `width` coordinates (one host sync)."""
        return self.overflow is not None and bool(self.overflow)

    def _flag(self, rows: torch.Tensor | None) -> None:
        if rows is not None:
            self.overflow = rows.any() if self.overflow is None else self.overflow | rows.any()

    def _width(self, d: int) -> int | None:
        """The top-k width for d coordinates: None (all of them) where compacting would not pay."""
        return None if self.width is None or self.width > d // 2 else self.width

    def direction(self, grad, sparsity=None):
        """`sparsity`: the fraction of coordinates kept, (B,) or one float for every example."""
        flat = grad.reshape(grad.shape[0], -1)
        d = flat.shape[1]
        if sparsity is None:
            sparsity = 1.0
        # keep the coordinates whose |grad| reaches the (1 - sparsity) quantile of the example:
        # the n_keep-th largest, found with topk of a width fixed in advance (no host sync)
        if not isinstance(sparsity, torch.Tensor):   # one number for every example: n_keep is bounded on the host
            width = min(d, _most_kept(sparsity, d, flat.dtype))
            n_keep = d - ((1 - flat.new_full((flat.shape[0],), sparsity)) * d).clamp(0, d - 1).long()
        else:
            width = self._width(d) or d
            n_keep = d - ((1 - sparsity) * d).clamp(0, d - 1).long()             # (B,) >= 1
            self._flag(n_keep > width if width < d else None)
        magnitude = flat.abs()
        largest = magnitude.topk(width, dim=1).values
        threshold = largest.gather(1, (n_keep.clamp(max=width) - 1)[:, None])
        step = torch.where(magnitude >= threshold, flat.sign(), 0.0)
        n_kept = step.abs().sum(dim=1, keepdim=True).clamp(min=1)  # exact 1/k: no near-ties for the projection
        return (step / n_kept).reshape(grad.shape)

    def project(self, x, x_adv):
        delta, overflow = _project(x, x_adv - x, self.eps, self._width(x.shape[1:].numel()))
        self._flag(overflow)
        return x + delta

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


def _most_kept(sparsity: float, d: int, dtype: torch.dtype) -> int:
    """An upper bound of `L1Ball.direction`'s n_keep for one `sparsity`, computed in `dtype`: s * d
    plus what rounding (1 - s) * d in that dtype can add."""
    return math.floor(sparsity * d + 3 * torch.finfo(dtype).eps * d) + 2


def compact_width(d: int, sparsity: float, eps: float) -> int:
    """How many coordinates per example an attack's compacted l1 computations keep, for inputs of
    d coordinates, an initial top-k `sparsity` and radius `eps`: room for 1.5x the first steps'
    sparsity * d, and for iterates that move up to 32 eps coordinates (d / 8 at least). CIFAR-10 at
    eps = 12: 384 for training (sparsity 0.05), where APGD-l1's iterates move about 250; 986 at the
    evaluation budget (sparsity 0.2), where they move up to about 780."""
    return max(d // 8, math.ceil(1.5 * sparsity * d) + 64, math.ceil(32 * eps))


def _device_rng(device: torch.device):
    """torch.cuda (or torch.mps, torch.xpu): the module holding `device`'s default generator; None for the CPU."""
    return None if device.type == 'cpu' else getattr(torch, device.type, None)


def _rng_states(device: torch.device, generators) -> list:
    """The states of the global generators (the CPU's, `device`'s) and of `generators`."""
    module = _device_rng(device)
    return [torch.get_rng_state(), None if module is None else module.get_rng_state(device),
            *(g.get_state() for g in generators)]


def _set_rng_states(device: torch.device, generators, states: list) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        _device_rng(device).set_rng_state(states[1], device)
    for g, state in zip(generators, states[2:]):
        g.set_state(state)


# widths that an attack once needed beyond `compact_width`'s, by (radius, that width): later
# calls start there instead of running twice. A speed hint: any width that holds the moving
# coordinates gives the same bits (sums in index order), and the computation on every coordinate
# the same up to float64 rounding of its sums (none for 8-bit images, whose sums are exact).
_WIDER: dict = {}


def run_compacted(ball: Ball, width: int, run, device: torch.device, generators=()):
    """`run(b)`, an attack in the ball b, with b the ball compacted to `width` coordinates per
    example, so that its loop never waits for the device; then one host sync asks whether some
    example needed more (l1 only). If so, `run` goes again with twice the width (every coordinate
    past half of them, where it cannot need more), from the random states (global, and
    `generators`) the first try started from, and later calls with the same `width` and radius
    start at the width that sufficed. The result is the exact one whatever the width."""
    if ball.compacted(width) is ball:
        return run(ball)
    key = (ball.eps, width)
    width = _WIDER.get(key, width)
    states = _rng_states(device, generators)
    while True:
        fast = ball.compacted(width)
        out = run(fast)
        if not fast.overflowed():
            return out
        width = _WIDER[key] = 2 * width
        _set_rng_states(device, generators, states)
