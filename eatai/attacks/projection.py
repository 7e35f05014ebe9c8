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
    """eps as a (B,) tensor like `like`; a Python number is filled in on the device (no copy from the host)."""
    if not isinstance(eps, torch.Tensor):
        return torch.full((batch,), float(eps), dtype=like.dtype, device=like.device)
    eps = eps.to(dtype=like.dtype, device=like.device)
    return eps.expand(batch) if eps.dim() == 0 else eps.reshape(batch)


def _row_sum(t: torch.Tensor) -> torch.Tensor:
    """Float64 sums of the rows, added in index order: zeros appended to a row (a wider top-k)
    leave the bits of its sum alone, as a tree reduction over another length need not."""
    return t.cumsum(dim=1, dtype=torch.float64)[:, -1]


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
    total_cap = _row_sum(cap)                                     # g below every kink
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
    exact = (_row_sum(magnitude * active) + _row_sum(cap * capped) - eps64) / n.clamp(min=1)
    lam = torch.where(n > 0, exact, lam)
    inside = _row_sum(magnitude.minimum(cap)) <= eps64
    return torch.where(inside, torch.zeros_like(lam), lam.clamp(min=0)).to(magnitude.dtype)


def _compacted_threshold(magnitude: torch.Tensor, cap: torch.Tensor, eps: torch.Tensor,
                         width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`l1_threshold` on each row's `width` largest movable coordinates (c_i > 0, hence z_i != 0).

    APGD-l1's iterates are sparse (about 10% of CIFAR-10's coordinates), so sorting the kinks of
    the largest ones only makes the projection several times cheaper, with a width fixed in
    advance: no host sync. Coordinates with |z_i| <= lam never move, so the result is exact unless
    a coordinate left out still moves: (B,) `overflow` flags those rows (the (width+1)-th largest
    movable |z_i| above lam)."""
    values, idx = magnitude.masked_fill(cap == 0, 0.0).topk(width + 1, dim=1)   # rows with fewer pad with zeros
    lam = l1_threshold(values[:, :width], cap.gather(1, idx[:, :width]), eps)
    return lam, values[:, width] > lam


def _project(x: torch.Tensor, delta: torch.Tensor, eps, width: int | None = None):
    """`l1_box_projection`, and (B,) bool rows whose result needed more than `width` coordinates
    (None where every coordinate was used: `width` None or above half of them)."""
    if x.shape != delta.shape:
        raise ValueError(f"x and delta must have the same shape, got {tuple(x.shape)} and {tuple(delta.shape)}")
    batch = x.shape[0]
    if batch == 0:
        return delta.clone(), None
    work = torch.promote_types(delta.dtype, torch.float32)
    z = delta.reshape(batch, -1).to(work)
    x_flat = x.reshape(batch, -1).to(work)
    # a number is checked on the host; a tensor of radii costs a sync
    if not (eps > 0 if isinstance(eps, (int, float)) else bool(torch.all(_as_rows(eps, batch, z) > 0))):
        raise ValueError("eps must be > 0 for every example")
    eps = _as_rows(eps, batch, z)
    magnitude, sign = z.abs(), z.sign()
    # how far each coordinate may move in the direction of z before leaving [0,1]
    cap = torch.where(z > 0, 1 - x_flat, x_flat).clamp_(min=0).masked_fill_(z == 0, 0.0)
    clipped = magnitude.minimum(cap)
    eps64 = eps.to(torch.float64)
    # Rows whose box-clipped delta already fits the budget are done (lam = 0). The same float64
    # sum decides this and bounds the output below, so projecting twice changes nothing.
    outside = clipped.sum(dim=1, dtype=torch.float64) > eps64
    overflow = None
    if width is None or width > z.shape[1] // 2:
        lam = l1_threshold(magnitude, cap, eps)
    else:
        lam, overflow = _compacted_threshold(magnitude, cap, eps, width)
        overflow = overflow & outside
    lam = torch.where(outside, lam, 0.0)[:, None]   # rows inside keep their box-clipped delta
    shrunk = magnitude - lam
    # Coordinates on the threshold (|z_i| = lam up to rounding) belong at 0: a residue of
    # 1e-17 would count as a moved pixel and mislead APGD-l1's sparsity estimate.
    shrunk = torch.where(shrunk <= 16 * torch.finfo(work).eps * lam, 0.0, shrunk)
    out = sign * shrunk.minimum(cap)
    # Rounding can leave ||out||_1 a hair above eps; shrinking towards 0 stays in the box.
    norm = out.abs().sum(dim=1, dtype=torch.float64)
    scale = torch.where(norm > eps64, eps64 / norm * (1 - 4 * torch.finfo(work).eps), 1.0)
    return (out * scale.to(work)[:, None]).reshape(delta.shape).to(delta.dtype), overflow


def l1_box_projection(x: torch.Tensor, delta: torch.Tensor, eps) -> torch.Tensor:
    """Project `delta` onto {d : ||d||_1 <= eps, 0 <= x + d <= 1}, each example on its own.

    x: (B, ...) clean inputs in [0,1]; delta: same shape; eps: float or (B,) tensor of radii.
    Returns the projected delta, same shape and dtype as `delta`. Computed in float32 or
    wider, with float64 running sums, so it stays exact to float error in mixed precision.
    No host sync (but one for a tensor eps, to check it).
    """
    return _project(x, delta, eps)[0]
