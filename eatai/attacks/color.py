"""ReColorAdv: one adversarial colour function applied to every pixel (Laidlaw & Feizi, NeurIPS 2019).

In CIELUV, bounded as in Laidlaw et al., ICLR 2021 (perceptual-advex's `ReColorAdvAttack`).

Colour space. sRGB (IEC 61966-2-1 transfer curve; primaries R (0.64, 0.33), G (0.30, 0.60), B (0.15, 0.06),
white D65 (0.3127, 0.3290), Y of white 1) to CIE XYZ to CIE 1976 L*u*v* with that white as reference
(`rgb_to_luv`, `luv_to_rgb`: differentiable torch, any float dtype; the matrix derived from the primaries and
its exact inverse, so that a round trip is exact to float precision, where the reference uses two separately
rounded 4-decimal matrices and white u'v' = (0.1978, 0.4683)). The attack works, as the reference does,
in CIELUV rescaled to about [0, 1]: (L*/100, (u* + 100)/200, (v* + 100)/200) (`to_recolor_space`). eps is
measured there, in l-inf: eps = 0.06 (the reference's CIFAR-10 bound) lets L* move by 6 and u*, v* by 12
units.

Colour function. Offsets (N, 3, 16, 32, 32) sit at the points of a regular grid over [0, 1]^3 of that space,
16 points along L and 32 along u and 32 along v (the reference's `resolution_x/y/z`), each bounded in l-inf
by eps. A pixel of colour c gets the change d(c), the trilinear interpolation of the offsets of the 8 grid
points around c (a colour outside the grid's box, as saturated reds and blues are, takes the offset of the
nearest point of the box): d(c) is a convex combination of offsets, so |d(c)| <= eps in every channel.
The new colour c + d(c) may leave the sRGB gamut; instead of clipping the RGB values afterwards (which need
not keep the CIELUV change within eps: the conversion is nonlinear) the change is shortened to c + t d(c),
with t in [0, 1] per colour found by bisection so that the colour stays in the gamut (t = 1 when it is
already). So every pixel's colour change is at most eps in l-inf in the rescaled CIELUV space, up to the
conversions' float error, and the same colour always becomes the same colour (`recolor_image`).

Attack. As the reference: minimise the Carlini-Wagner margin (true logit minus the largest other, unclipped:
its CWLossF6 with kappa = inf) plus `0.0036 / eps` times the smoothness of the offsets (recoloradv's
`norms.smoothness`: over every grid point and its neighbours along L, u and v, the l2 distance of their
offsets, each pair counted from both sides, sqrt(. + 1e-10)), with Adam (the reference's lr 0.001 at its
bound 0.06, i.e. lr = eps / 60) for 100 iterations (the perceptual-advex README's CIFAR-10 evaluation:
`ReColorAdvAttack(model, num_iterations=100)`; 20, its default, for quick runs), offsets clamped to the
bound after each step. Differences: the reference's function returns the interpolated grid *values*, the
identity grid plus offsets, so colours outside the grid's box move even at zero offset (pure red's u* of
175 becomes 100), it pulls grid values into [0, 1]^3 and the gamut before each projection, and it clips the
output in RGB; here the function is the identity plus an offset
everywhere and shortens instead of clipping (see above), so that the bound holds per pixel. Each point
keeps its iterate of lowest margin, the last one included (the reference keeps the lowest regularised loss).
The reference starts from zero offsets (its `randomize` option instead samples offsets uniform in the bound,
independently at every grid point, and does not optimise). With `generators` (as the evaluation runs it)
the start is a random uniform colour shift: one vector uniform in [-eps, eps]^3 per point, the same at every
grid point, drawn from the point's own generator. A shift has smoothness zero, whereas independent draws per
grid point start with a penalty (about 500) that dwarfs the margin. On 87 clean-correct test points of the
bundled sample and l-inf checkpoint (cifar_cnn) at eps 0.06, 100 steps: 81 stay robust from zero offsets,
77 from independent uniform offsets, 75 to 78 from a shift (four seeds; 68 survive all four); 75 against
the reference implementation (perceptual-advex 0.2.6, recoloradv 0.0.1), 4 of whose 87 outputs exceed the
bound per pixel (up to 0.30: colours outside the grid's box, and clipping in RGB).

Monotone in eps by construction of the steps: the offsets are eps * w, w in [-1, 1] the optimised variable;
Adam's step is 1/60 in w for every eps and the penalty 0.0036 / eps * smoothness(eps * w) does not depend on
eps, so from the same start w (zero, or drawn from the point's generator) only the model's answers differ
between strengths. (A tendency, not a theorem: a larger bound can still lead the ascent elsewhere.)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .guards import check_batch, check_labels, check_smoothness_and_lr, eval_mode

__all__ = ['RECOLOR_GRID', 'RECOLOR_ITERATIONS', 'RECOLOR_SMOOTHNESS', 'RECOLOR_LR', 'RGB_TO_XYZ', 'XYZ_TO_RGB',
           'rgb_to_luv', 'luv_to_rgb',
           'to_recolor_space', 'from_recolor_space', 'recolor_change', 'recolor_image', 'color_smoothness',
           'random_offsets', 'recolor']

RECOLOR_GRID = (16, 32, 32)     # grid points along (L, u, v): ReColorAdvAttack's resolution_x, _y, _z
RECOLOR_ITERATIONS = 100        # perceptual-advex README, CIFAR-10: ReColorAdvAttack(model, num_iterations=100)
RECOLOR_SMOOTHNESS = 0.0036     # smoothness weight times eps: ReColorAdvAttack's perturbation_norm_loss=0.0036 / bound
RECOLOR_LR = 1 / 60             # Adam's step in units of eps: mister_ed's lr 0.001 at the bound 0.06
_ADAM = (0.9, 0.999, 1e-8)      # torch.optim.Adam's defaults, which the reference uses
_SMOOTH_EPS = 1e-10             # inside the square root of the smoothness, as the reference
_BISECTIONS = 10                # halvings of t: the shortened change is within 1/1024 of the gamut's edge
_TINY = 1e-30                   # keeps chromaticities finite at black


def _chromaticity_matrix() -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """(linear sRGB -> XYZ, XYZ -> linear sRGB) from the sRGB primaries and D65, Y of white 1 (float64)."""
    primaries = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
    wx, wy = 0.3127, 0.3290
    white = (wx / wy, 1.0, (1 - wx - wy) / wy)
    xyz = [(x / y, 1.0, (1 - x - y) / y) for x, y in primaries]            # each primary at Y = 1
    p = [[xyz[j][i] for j in range(3)] for i in range(3)]                   # columns: the primaries
    scale = _solve(p, white)                                                # primaries' Y so that they add up to white
    m = tuple(tuple(p[i][j] * scale[j] for j in range(3)) for i in range(3))
    return m, _inverse(m)


def _det(a) -> float:
    return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))


def _inverse(a) -> tuple[tuple[float, ...], ...]:
    """The inverse of a 3x3 matrix (cofactors over the determinant), in Python floats."""
    d = _det(a)
    cof = [[(a[(i + 1) % 3][(j + 1) % 3] * a[(i + 2) % 3][(j + 2) % 3]
             - a[(i + 1) % 3][(j + 2) % 3] * a[(i + 2) % 3][(j + 1) % 3]) for j in range(3)] for i in range(3)]
    return tuple(tuple(cof[j][i] / d for j in range(3)) for i in range(3))


def _solve(a, b) -> tuple[float, ...]:
    inv = _inverse(a)
    return tuple(sum(inv[i][j] * b[j] for j in range(3)) for i in range(3))


RGB_TO_XYZ, XYZ_TO_RGB = _chromaticity_matrix()
_XN, _YN, _ZN = (sum(row) for row in RGB_TO_XYZ)           # XYZ of white: RGB (1, 1, 1)
_UN = 4 * _XN / (_XN + 15 * _YN + 3 * _ZN)                 # u', v' of white
_VN = 9 * _YN / (_XN + 15 * _YN + 3 * _ZN)
_DELTA = 6 / 29                                             # CIE: L* is linear in Y below (6/29)^3
# per RGB row (m_X, m_Y, m_Z) of XYZ_TO_RGB: the coefficients of u' q, v' q, q and Y (see `_luv_to_linear`)
_LUV_ROWS = tuple((9 * mx - 3 * mz, -20 * mz, 12 * mz, my) for mx, my, mz in XYZ_TO_RGB)


def _mix(m, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The 3x3 matrix m (Python floats) applied to three channels: no tensor made from host data."""
    return tuple(m[i][0] * a + m[i][1] * b + m[i][2] * c for i in range(3))


def _decode(v: torch.Tensor) -> torch.Tensor:
    """sRGB value -> linear light (IEC 61966-2-1); the power's argument clamped so that no NaN reaches a gradient."""
    return torch.where(v <= 0.04045, v / 12.92, ((v.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def _encode(v: torch.Tensor) -> torch.Tensor:
    """Linear light -> sRGB value (IEC 61966-2-1)."""
    return torch.where(v <= 0.0031308, 12.92 * v, 1.055 * v.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def rgb_to_luv(x: torch.Tensor) -> torch.Tensor:
    """sRGB x (N, 3, H, W) in [0,1] -> CIE 1976 (L*, u*, v*) (N, 3, H, W), D65 white, L* in [0, 100];
    black is (0, 0, 0). Differentiable."""
    r, g, b = _decode(x).unbind(1)
    big_x, big_y, big_z = _mix(RGB_TO_XYZ, r, g, b)
    t = big_y / _YN
    f = torch.where(t > _DELTA ** 3, t.clamp(min=_DELTA ** 3) ** (1 / 3), t / (3 * _DELTA ** 2) + 4 / 29)
    lightness = 116 * f - 16
    denom = big_x + 15 * big_y + 3 * big_z + _TINY
    u = 13 * lightness * (4 * big_x / denom - _UN)
    v = 13 * lightness * (9 * big_y / denom - _VN)
    return torch.stack([lightness, u, v], 1)


def _luv_to_linear(luv: torch.Tensor) -> torch.Tensor:
    """CIE (L*, u*, v*) (N, 3, ...) -> linear sRGB (N, 3, ...), unclipped (out of gamut: outside [0, 1])."""
    lightness, u, v = luv.unbind(1)
    inv = 1 / (13 * lightness + _TINY)
    up, vp = u * inv + _UN, v * inv + _VN                               # chromaticity u', v'
    f = (lightness + 16) / 116
    big_y = _YN * torch.where(f > _DELTA, f * f * f, 3 * _DELTA ** 2 * (f - 4 / 29))
    vp = torch.where(vp.abs() < _TINY, _TINY, vp)                        # no 0/0 where no colour is anyway
    q = big_y / (4 * vp)
    # X = 9 u' q and Z = (12 - 3 u' - 20 v') q, folded into the XYZ -> RGB rows
    return torch.stack([q * (a * up + b * vp + c) + k * big_y for a, b, c, k in _LUV_ROWS], 1)


def luv_to_rgb(luv: torch.Tensor) -> torch.Tensor:
    """CIE (L*, u*, v*) (N, 3, H, W) -> sRGB (N, 3, H, W), the inverse of `rgb_to_luv`; unclipped."""
    return _encode(_luv_to_linear(luv))


_SCALE = (100.0, 200.0, 200.0)
_SHIFT = (0.0, 100.0, 100.0)


def to_recolor_space(luv: torch.Tensor) -> torch.Tensor:
    """CIE (L*, u*, v*) (N, 3, ...) -> the reference's rescaled CIELUV (L*/100, (u*+100)/200, (v*+100)/200)."""
    return torch.stack([(c + s) / k for c, s, k in zip(luv.unbind(1), _SHIFT, _SCALE)], 1)


def from_recolor_space(w: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_recolor_space`."""
    return torch.stack([c * k - s for c, s, k in zip(w.unbind(1), _SHIFT, _SCALE)], 1)


def recolor_change(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) each pixel's colour change from x to x_adv in the rescaled CIELUV space, computed in
    float64: what eps bounds in l-inf."""
    return to_recolor_space(rgb_to_luv(x_adv.double())) - to_recolor_space(rgb_to_luv(x.double()))


class _Interpolation:
    """Trilinear interpolation of grid offsets (rescaled units) at fixed CIELUV colours c (N, 3, P): the corner
    indices and weights are computed once, as the colours of x do not change during the attack."""

    def __init__(self, c: torch.Tensor, grid: tuple[int, int, int]):
        n, _, p = c.shape
        sizes = c.new_tensor(grid)[None, :, None] - 1
        pos = to_recolor_space(c).clamp(0, 1) * sizes                    # (N, 3, P) in grid steps
        low = pos.floor().clamp(max=sizes - 1)                           # the cell's lower corner
        frac = pos - low                                                 # in [0, 1]
        low = low.long()
        index, weight = [], []
        for corner in range(8):
            bits = [(corner >> k) & 1 for k in (2, 1, 0)]                # along (L, u, v)
            i = [low[:, k] + bits[k] for k in range(3)]
            index.append((i[0] * grid[1] + i[1]) * grid[2] + i[2])      # flat grid index (N, P)
            w = [frac[:, k] if bits[k] else 1 - frac[:, k] for k in range(3)]
            weight.append(w[0] * w[1] * w[2])
        self.index = torch.stack(index, 1).reshape(n, 1, 8 * p)         # (N, 1, 8P)
        self.weight = torch.stack(weight, 1)[:, None]                    # (N, 1, 8, P), summing to 1 over corners
        self.units = c.new_tensor(_SCALE)[None, :, None]                 # (1, 3, 1) CIE units per rescaled unit
        self.p = p

    def __call__(self, offsets: torch.Tensor) -> torch.Tensor:
        """offsets (N, 3, GL, Gu, Gv) in rescaled units -> the change (N, 3, P) of each colour in CIE units."""
        n = offsets.shape[0]
        flat = offsets.reshape(n, 3, -1)
        corners = flat.gather(2, self.index.expand(n, 3, -1)).reshape(n, 3, 8, self.p)
        return (corners * self.weight).sum(2) * self.units


def _in_gamut(luv: torch.Tensor) -> torch.Tensor:
    """(N, P) whether the CIELUV colours (N, 3, P) are sRGB colours (linear values in [0, 1])."""
    return (_luv_to_linear(luv) - 0.5).abs().amax(1) <= 0.5


def _shortened(c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(N, 1, P) t in [0, 1] per colour: 1 if c + d (CIELUV, (N, 3, P)) is in the sRGB gamut, else an in-gamut t
    found by bisection (the gamut need not be convex in CIELUV: t is in gamut, not necessarily the largest such).
    Without gradient: t is a per-colour constant."""
    with torch.no_grad():
        low, high = torch.zeros_like(c[:, :1]), torch.ones_like(c[:, :1])
        for _ in range(_BISECTIONS):
            mid = (low + high) / 2
            ok = _in_gamut(c + mid * d)[:, None]
            low, high = torch.where(ok, mid, low), torch.where(ok, high, mid)
        return torch.where(_in_gamut(c + d)[:, None], 1.0, low)


def _to_image(c: torch.Tensor, d: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The image (N, 3, H, W) of colours c + t d (CIELUV (N, 3, P)), t from `_shortened`."""
    linear = _luv_to_linear(c + _shortened(c, d) * d)
    # in gamut by construction: the clamps only remove float error (around 1e-7) of the conversion
    return _encode(linear.clamp(0, 1)).clamp(0, 1).reshape(shape)


def _colours(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, P) the colours of x (N, 3, H, W) in CIELUV."""
    return rgb_to_luv(x).reshape(x.shape[0], 3, -1)


def recolor_image(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x (N, 3, H, W) in [0,1] with every colour changed by the colour function of `offsets` (N, 3, GL, Gu, Gv),
    shortened into the sRGB gamut (see the module's docstring). Differentiable in the offsets."""
    c = _colours(x)
    return _to_image(c, _Interpolation(c, tuple(offsets.shape[2:]))(offsets), x.shape)


def color_smoothness(offsets: torch.Tensor) -> torch.Tensor:
    """(N,) recoloradv's smoothness of offsets (N, 3, GL, Gu, Gv): over every grid point and each neighbour
    along L, u and v, sqrt(squared l2 distance of their offsets + 1e-10); a neighbour beyond the edge is the
    point itself (the reference's edge handling), adding a constant."""
    total = offsets.new_zeros(offsets.shape[0])
    points = math.prod(offsets.shape[2:])
    for dim in (2, 3, 4):
        step = offsets.diff(dim=dim).pow(2).sum(1)                      # (N, ...) squared distances of neighbours
        edge = points // offsets.shape[dim] * math.sqrt(_SMOOTH_EPS)     # one face's points, each its own neighbour
        # each pair of neighbours is counted from both sides, each face once
        total = total + 2 * ((step + _SMOOTH_EPS).sqrt().flatten(1).sum(1) + edge)
    return total


def _smoothness_grad(offsets: torch.Tensor) -> torch.Tensor:
    """The gradient of `color_smoothness(offsets).sum()` w.r.t. offsets (N, 3, GL, Gu, Gv), written out: a third
    of autograd's cost, which dominates the attack's own work on small models."""
    grad = torch.zeros_like(offsets)
    for dim in (2, 3, 4):
        step = offsets.diff(dim=dim)                                    # (N, 3, ...) neighbour differences
        unit = step / (step.pow(2).sum(1, keepdim=True) + _SMOOTH_EPS).sqrt()
        size = offsets.shape[dim] - 1
        grad.narrow(dim, 1, size).add_(unit, alpha=2)                  # each pair counted from both sides
        grad.narrow(dim, 0, size).sub_(unit, alpha=2)
    return grad


def random_offsets(grid: tuple[int, int, int], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """(1, 3, GL, Gu, Gv) the random start w: one vector uniform in [-1, 1]^3, drawn on the CPU from `generator`,
    at every grid point (a uniform colour shift, of smoothness zero); offsets are eps * w."""
    shift = 2 * torch.rand((1, 3, 1, 1, 1), generator=generator) - 1
    return shift.to(like).expand(1, 3, *grid).clone()


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) true logit minus the largest other: the reference's CWLossF6 with kappa = inf (< 0: misclassified)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float('-inf')).amax(1)
    return true - other


def _check(eps, n_iter, smoothness, lr, grid, x, generators) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (the l-inf bound of the colour offsets in rescaled "
                         f"CIELUV), got {eps!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}")
    check_smoothness_and_lr(smoothness, lr)
    if len(grid) != 3 or any(isinstance(g, bool) or not isinstance(g, int) or g < 2 for g in grid):
        raise ValueError(f"grid must be three integers >= 2 (points along L, u, v), got {grid!r}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"ReColorAdv needs RGB images (N, 3, H, W), got shape {tuple(x.shape)}")
    if generators is not None and len(generators) != len(x):
        raise ValueError(f"generators must hold one generator per point ({len(x)}), got {len(generators)}")


def recolor(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_iter: int = RECOLOR_ITERATIONS,
            generators: list[torch.Generator] | None = None, *, smoothness: float = RECOLOR_SMOOTHNESS,
            lr: float = RECOLOR_LR, grid: tuple[int, int, int] = RECOLOR_GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """ReColorAdv on x (N, 3, H, W) in [0,1], labels y (N,): colour offsets bounded by eps in l-inf (rescaled CIELUV).

    Adam descent (step `lr * eps`) on margin + (smoothness / eps) * `color_smoothness` for `n_iter` steps,
    from zero offsets, or with `generators` (one CPU generator per point) from a uniform colour shift in
    [-eps, eps]^3 drawn from point i's own generator (`random_offsets`). Returns (x_adv, offsets): per point
    its iterate of lowest margin, x_adv (N, 3, H, W) = recolor_image(x, offsets), offsets (N, 3, GL, Gu, Gv)
    with |offsets| <= eps. n_iter + 1 forwards, n_iter backwards.
    """
    _check(eps, n_iter, smoothness, lr, grid, x, generators)
    y_max = check_batch(x, y)
    x, y = x.detach(), y.detach().long()
    n = len(x)
    if eps == 0 or n == 0:
        return x.clone(), x.new_zeros(n, 3, *grid)
    c = _colours(x)                                                        # (N, 3, P) in CIELUV
    interpolate = _Interpolation(c, grid)
    if generators is None:
        w = x.new_zeros(n, 3, *grid)
    else:
        w = torch.cat([random_offsets(grid, g, x) for g in generators])
    beta1, beta2, adam_eps = _ADAM
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    best_margin = x.new_full((n,), float('inf'))
    best_offsets, best_x = torch.zeros_like(w), x.clone()
    weight = smoothness / eps
    with eval_mode(model):
        for step in range(n_iter + 1):
            w.requires_grad_(step < n_iter)
            with torch.set_grad_enabled(step < n_iter):
                offsets = eps * w                                          # |offsets| <= eps: |w| <= 1
                x_adv = _to_image(c, interpolate(offsets), x.shape)
                logits = model(x_adv)
                if step == 0:
                    check_labels(y, logits, y_max)
                margin = _margin(logits.float(), y)
            better = margin.detach() < best_margin                         # the first iterate always counts
            best_margin = torch.where(better, margin.detach(), best_margin)
            best_offsets = torch.where(better[:, None, None, None, None], offsets.detach(), best_offsets)
            best_x = torch.where(better[:, None, None, None], x_adv.detach(), best_x)
            if step == n_iter:
                break
            grad, = torch.autograd.grad(margin.sum(), w)
            grad.add_(_smoothness_grad(offsets.detach()), alpha=weight * eps)   # d/dw of weight * smoothness(eps w)
            # Adam descent, element-wise: a point's steps depend on its own gradients only (batch invariance)
            t = step + 1
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v / (1 - beta2 ** t)).sqrt_().add_(adam_eps)
            w = w.detach().addcdiv(m, denom, value=-lr / (1 - beta1 ** t)).clamp_(-1, 1)   # project onto the bound
    return best_x, best_offsets
