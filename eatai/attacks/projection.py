"""Exact Euclidean projection onto the l1 ball intersected with the [0,1] box.

For a clean image x and a perturbation z we want
    argmin_delta ||delta - z||_2   s.t.  ||delta||_1 <= eps,  0 <= x + delta <= 1.
The problem separates per coordinate once the l1 constraint gets its Lagrange multiplier
lam >= 0: delta_i = sign(z_i) * clip(|z_i| - lam, 0, c_i), where c_i is how far coordinate i
may move towards sign(z_i) before leaving the box (1 - x_i upwards, x_i downwards).
g(lam) = sum_i clip(|z_i| - lam, 0, c_i) is piecewise linear and non-increasing, with kinks at
|z_i| - c_i and |z_i|; lam is the point where g(lam) = eps (or 0 if the box alone keeps the
l1 norm below eps). Sorting the 2d kinks gives lam exactly, as in "Mind the box" (Croce &
Hein, 2021).
"""
from __future__ import annotations

import torch

__all__ = ['l1_box_projection', 'l1_threshold']


def _as_rows(eps, batch: int, like: torch.Tensor) -> torch.Tensor:
    eps = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    return eps.expand(batch) if eps.dim() == 0 else eps.reshape(batch)


def l1_threshold(magnitude: torch.Tensor, cap: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The multiplier lam >= 0 with sum_i clip(magnitude_i - lam, 0, cap_i) = eps, per row.

    magnitude, cap: (B, d) non-negative; eps: (B,) > 0. Rows whose capped total is already
    <= eps get lam = 0.
    """
    batch, d = magnitude.shape
    kinks = torch.cat((magnitude - cap, magnitude), dim=1)       # (B, 2d)
    kinks, order = kinks.sort(dim=1)
    # Passing a kink |z|-c one more coordinate leaves its cap and starts to shrink (slope -1);
    # passing |z| it reaches zero and stops shrinking (slope +1).
    n_active = torch.where(order < d, 1.0, -1.0).to(torch.float64).cumsum(dim=1)  # (B, 2d)
    gaps = kinks.diff(dim=1).to(torch.float64)                   # (B, 2d-1)
    total_cap = cap.sum(dim=1, dtype=torch.float64)               # g below every kink
    g = torch.cat((total_cap[:, None], total_cap[:, None] - (n_active[:, :-1] * gaps).cumsum(dim=1)), dim=1)
    eps64 = eps.to(torch.float64)
    # Last kink where g is still above eps; lam lies between it and the next kink.
    k = ((g > eps64[:, None]).sum(dim=1) - 1).clamp(0, 2 * d - 1)
    rows = torch.arange(batch, device=magnitude.device)
    lam = kinks[rows, k].to(torch.float64) + (g[rows, k] - eps64) / n_active[rows, k].clamp(min=1)
    # Recompute lam from its active set alone: removes the rounding the running sums collected.
    active = (magnitude - cap < lam[:, None]) & (magnitude > lam[:, None])
    capped = (magnitude - cap >= lam[:, None])
    n = active.sum(dim=1)
    exact = ((magnitude * active).sum(dim=1, dtype=torch.float64)
             + (cap * capped).sum(dim=1, dtype=torch.float64) - eps64) / n.clamp(min=1)
    lam = torch.where(n > 0, exact, lam)
    inside = magnitude.minimum(cap).sum(dim=1, dtype=torch.float64) <= eps64
    return torch.where(inside, torch.zeros_like(lam), lam.clamp(min=0)).to(magnitude.dtype)


def _threshold_on_live_coordinates(magnitude: torch.Tensor, cap: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """`l1_threshold` on the coordinates that can move at all (|z_i| > 0 and c_i > 0).

    APGD-l1 iterates are sparse (about 10% of CIFAR-10's coordinates), so sorting only the
    live ones instead of all 2d kinks makes the projection several times cheaper."""
    live = (magnitude > 0) & (cap > 0)
    k = int(live.sum(dim=1).max())
    if k == 0:
        return magnitude.new_zeros(magnitude.shape[0])
    if k > magnitude.shape[1] // 2:
        return l1_threshold(magnitude, cap, eps)
    values, idx = (magnitude * live).topk(k, dim=1)   # rows with fewer live coordinates pad with zeros
    return l1_threshold(values, cap.gather(1, idx) * live.gather(1, idx), eps)


def l1_box_projection(x: torch.Tensor, delta: torch.Tensor, eps) -> torch.Tensor:
    """Project `delta` onto {d : ||d||_1 <= eps, 0 <= x + d <= 1}, each example on its own.

    x: (B, ...) clean inputs in [0,1]; delta: same shape; eps: float or (B,) tensor of radii.
    Returns the projected delta, same shape and dtype as `delta`. Computed in float32 or
    wider, with float64 running sums, so it stays exact to float error in mixed precision.
    """
    if x.shape != delta.shape:
        raise ValueError(f"x and delta must have the same shape, got {tuple(x.shape)} and {tuple(delta.shape)}")
    batch = x.shape[0]
    if batch == 0:
        return delta.clone()
    work = torch.promote_types(delta.dtype, torch.float32)
    z = delta.reshape(batch, -1).to(work)
    x_flat = x.reshape(batch, -1).to(work)
    eps = _as_rows(eps, batch, z)
    if not bool(torch.all(eps > 0)):
        raise ValueError("eps must be > 0 for every example")
    magnitude = z.abs()
    # how far each coordinate may move in the direction of z before leaving [0,1]
    cap = torch.where(z > 0, 1 - x_flat, x_flat).clamp(min=0) * (z != 0)
    clipped = magnitude.minimum(cap)
    eps64 = eps.to(torch.float64)
    # Rows whose box-clipped delta already fits the budget are done (lam = 0). The same float64
    # sum decides this and bounds the output below, so projecting twice changes nothing.
    outside = (clipped.sum(dim=1, dtype=torch.float64) > eps64).nonzero()[:, 0]
    out = z.sign() * clipped
    if outside.numel():
        mag, c = magnitude[outside], cap[outside]
        lam = _threshold_on_live_coordinates(mag, c, eps[outside])[:, None]
        shrunk = mag - lam
        # Coordinates on the threshold (|z_i| = lam up to rounding) belong at 0: a residue of
        # 1e-17 would count as a moved pixel and mislead APGD-l1's sparsity estimate.
        shrunk = torch.where(shrunk <= 16 * torch.finfo(work).eps * lam, 0.0, shrunk)
        out[outside] = z[outside].sign() * shrunk.minimum(c)
        # Rounding can leave ||out||_1 a hair above eps; shrinking towards 0 stays in the box.
        norm = out[outside].abs().sum(dim=1, dtype=torch.float64)
        over = norm > eps64[outside]
        scale = torch.where(over, eps64[outside] / norm * (1 - 4 * torch.finfo(work).eps), 1.0)
        out[outside] = out[outside] * scale.to(work)[:, None]
    return out.reshape(delta.shape).to(delta.dtype)
