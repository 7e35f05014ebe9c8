"""StAdv: an adversarial flow field that moves every pixel a little (Xiao et al., ICLR 2018).

The flow is bounded in l-inf as in Laidlaw et al., ICLR 2021 (perceptual-advex's `StAdvAttack`).

The adversarial image samples x bilinearly at displaced positions: x_adv = grid_sample(x, identity + flow).
The flow (N, H, W, 2) is measured, as the reference measures it, in grid_sample's normalised coordinates
(align_corners=False: the image spans [-1, 1] from its left edge to its right edge), so a flow of `bound`
moves a pixel by at most bound * W / 2 pixels horizontally and bound * H / 2 vertically: their CIFAR-10
bound 0.05 is 0.8 pixels on 32x32 images (2.5% of the side). As in the reference, the sampling grid is
clipped to [-1, 1] and grid_sample pads with zeros, so a border pixel pulled outwards may mix in up to
half a pixel of black.

The reference (perceptual-advex 0.2.6 on recoloradv 0.0.1's mister_ed) maximises the Carlini-Wagner margin
(largest other logit minus the true one, unclipped) minus `0.0025 / bound` times Xiao et al.'s flow loss
(Eq. 4: sum over pixels and their four neighbours of sqrt(|du|^2 + |dv|^2 + 1e-10), the border
neighbour being the pixel itself), with Adam (lr 0.01) on the grid, projected onto the bound before each
forward, for 100 iterations on CIFAR-10 (its README's evaluation command; 20 is the package default),
from the zero flow (a uniform random flow in the bound with `randomize`). It returns the last iterate.

Here the flow is `bound * u`, u in [-1, 1] the optimised variable, and Adam's step is `lr * bound` in
flow units (0.01 at the bound 0.05): the penalty weight is `smoothness / bound` and the flow loss scales
with the flow, so from the same start u the steps in u do not depend on the bound and only the model's
answers differ between bounds (robust accuracy is then monotone in the bound in practice; not a theorem).
Each point keeps its iterate of largest margin, the last one included, so a point misclassified at
any iterate counts as broken: never weaker than the reference's last iterate.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .guards import check_batch, check_labels, check_smoothness_and_lr, eval_mode

__all__ = ['STADV_ITERATIONS', 'STADV_SMOOTHNESS', 'STADV_LR', 'identity_grid', 'apply_flow', 'flow_loss',
           'flow_reach', 'random_flow', 'stadv']

STADV_ITERATIONS = 100      # perceptual-advex README, CIFAR-10 evaluation: StAdvAttack(model, num_iterations=100)
STADV_SMOOTHNESS = 0.0025   # flow-loss weight times the bound: StAdvAttack's perturbation_norm_loss=0.0025 / bound
STADV_LR = 0.2              # Adam's step in units of the bound: StAdvAttack's lr=0.01 at its bound 0.05
_ADAM = (0.9, 0.999, 1e-8)  # torch.optim.Adam's defaults, which the reference uses
_EPS_FLOW = 1e-10           # inside the square root of the flow loss, as the reference


def identity_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(1, H, W, 2) the pixel centres in grid_sample's normalised (x, y) coordinates, align_corners=False."""
    xs = (2 * torch.arange(w, dtype=like.dtype, device=like.device) + 1) / w - 1
    ys = (2 * torch.arange(h, dtype=like.dtype, device=like.device) + 1) / h - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing='xy'), dim=-1).unsqueeze(0)


def apply_flow(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) sampled bilinearly at the pixel centres moved by flow (N, H, W, 2), in normalised
    coordinates; outside the image counts as 0, as grid_sample's default padding in the reference."""
    grid = identity_grid(x.shape[2], x.shape[3], x) + flow
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)


def flow_loss(flow: torch.Tensor) -> torch.Tensor:
    """(N,) Xiao et al.'s flow loss (Eq. 4) of flow (N, H, W, 2): over every pixel and each of its four
    neighbours, sqrt(squared difference of their flows + 1e-10); a neighbour beyond the border is the
    pixel itself (the reference's edge handling), adding a constant."""
    dx = (flow[:, :, 1:] - flow[:, :, :-1]).pow(2).sum(-1)       # (N, H, W-1)
    dy = (flow[:, 1:] - flow[:, :-1]).pow(2).sum(-1)             # (N, H-1, W)
    h, w = flow.shape[1:3]
    border = 2 * (h + w) * math.sqrt(_EPS_FLOW)                  # the pixels' own-flow neighbours at the edges
    # each pair of neighbours is counted from both sides
    return 2 * ((dx + _EPS_FLOW).sqrt().sum((1, 2)) + (dy + _EPS_FLOW).sqrt().sum((1, 2))) + border


def flow_reach(bound: float, h: int, w: int) -> tuple[int, int]:
    """(rows, columns): how far, in whole pixels, a bilinear sample under a flow of l-inf size `bound` can
    reach from its pixel: the displacement (bound * H / 2, bound * W / 2) rounded up, plus 1 for the
    bilinear neighbours."""
    return math.ceil(bound * h / 2) + 1, math.ceil(bound * w / 2) + 1


def _u_limits(bound: float, h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, H, W, 2) each the range of u in [-1, 1] whose grid stays within [-1, 1] (the reference clips it)."""
    base = identity_grid(h, w, like)
    return ((-1 - base) / bound).clamp(min=-1), ((1 - base) / bound).clamp(max=1)


def random_flow(shape: tuple[int, int, int], bound: float, generator: torch.Generator | None,
                like: torch.Tensor) -> torch.Tensor:
    """(1, H, W, 2) u uniform in [-1, 1] (mister_ed's `random_init` of the flow), within the clipped grid;
    drawn on the CPU from `generator` (shape: (C, H, W) of one image). Returns u, the flow over `bound`."""
    h, w = shape[-2:]
    u = (2 * torch.rand((1, h, w, 2), generator=generator) - 1).to(like)
    return u.clamp(*_u_limits(bound, h, w, like)) if bound > 0 else u


_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _at_most(bound: float, dtype: torch.dtype) -> float:
    """The largest number of `dtype` not above `bound` (float32's 0.05 is 0.0500000007: above 0.05), so that
    |flow| <= bound holds exactly however it is compared."""
    kind = _NUMPY.get(dtype)
    if kind is None:   # bfloat16 and the like: round through torch (one read-back, outside the loop)
        value = torch.tensor(bound, dtype=dtype)
        return float(value if float(value) <= bound else torch.nextafter(value, value.new_zeros(())))
    value = kind(bound)
    return float(value if float(value) <= bound else np.nextafter(value, kind(0)))


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) largest other logit minus the true one: the reference's CW loss with kappa = inf."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float('-inf')).amax(1)
    return other - true


def _check(bound, n_iter, smoothness, lr, x, generators) -> None:
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound < 0:
        raise ValueError(f"bound must be a finite number >= 0 (the flow's l-inf size in normalised coordinates), "
                         f"got {bound!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be an integer >= 1, got {n_iter!r}")
    check_smoothness_and_lr(smoothness, lr)
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if generators is not None and len(generators) != len(x):
        raise ValueError(f"generators must hold one generator per point ({len(x)}), got {len(generators)}")


def stadv(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float, n_iter: int = STADV_ITERATIONS,
          smoothness: float = STADV_SMOOTHNESS, generators: list[torch.Generator] | None = None,
          lr: float = STADV_LR) -> tuple[torch.Tensor, torch.Tensor]:
    """StAdv on x (N, C, H, W) in [0,1], labels y (N,), with |flow| <= bound (l-inf, normalised coordinates).

    Adam ascent (step `lr * bound`) on margin - (smoothness / bound) * flow_loss for `n_iter` steps, from the
    zero flow, or with `generators` (one CPU generator per point) from a uniform random flow drawn from
    point i's own generator. Returns (x_adv, flow): per point its iterate of largest margin, x_adv (N, C, H, W)
    = apply_flow(x, flow), flow (N, H, W, 2) with |flow| <= bound. n_iter + 1 forwards, n_iter backwards.
    """
    _check(bound, n_iter, smoothness, lr, x, generators)
    y_max = check_batch(x, y)
    x, y = x.detach(), y.detach().long()
    n, _, h, w = x.shape
    if bound == 0 or n == 0:
        return x.clone(), x.new_zeros(n, h, w, 2)
    lo, hi = _u_limits(bound, h, w, x)
    limit = _at_most(bound, x.dtype)
    if generators is None:
        u = x.new_zeros(n, h, w, 2)
    else:
        u = torch.cat([random_flow(x.shape[1:], bound, g, x) for g in generators])
    beta1, beta2, eps = _ADAM
    m, v = torch.zeros_like(u), torch.zeros_like(u)
    best_margin = x.new_full((n,), float('-inf'))
    best_flow, best_x = x.new_zeros(n, h, w, 2), x.clone()
    weight = smoothness / bound
    with eval_mode(model):
        for step in range(n_iter + 1):
            u.requires_grad_(True)
            flow = bound * u                                      # |u| <= 1; the clamp only undoes rounding,
            flow = flow + (flow.clamp(-limit, limit) - flow).detach()   # so the gradient passes it as it is
            x_adv = apply_flow(x, flow)                           # (N, C, H, W)
            logits = model(x_adv)
            if step == 0:
                check_labels(y, logits, y_max)
            margin = _margin(logits.float(), y)
            better = margin.detach() > best_margin                # the first iterate always counts
            best_margin = torch.where(better, margin.detach(), best_margin)
            best_flow = torch.where(better[:, None, None, None], flow.detach(), best_flow)
            best_x = torch.where(better[:, None, None, None], x_adv.detach(), best_x)
            if step == n_iter:
                break
            objective = margin - weight * flow_loss(flow)
            grad, = torch.autograd.grad(objective.sum(), u)
            # Adam ascent, element-wise: a point's steps depend on its own gradients only (batch invariance)
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad * grad
            t = step + 1
            update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
            u = torch.minimum(torch.maximum(u.detach() + lr * update, lo), hi)   # project onto the bound
    return best_x.clamp(0, 1), best_flow
