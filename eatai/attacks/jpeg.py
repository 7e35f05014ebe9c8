"""The JPEG threat's attack: an l-inf change of an image's quantised JPEG coefficients.

This is the JPEG-L_inf attack of Kang et al. 2019, "Testing robustness against unforeseen adversaries", as
their advex-uar package implements it.

The image goes through JPEG's encoder without its rounding, as advex-uar's differentiable JPEG does: RGB to
YCbCr (JFIF, full range, 8-bit scale), 4:2:0 chroma (means of 2x2 pixels), 8x8 block DCT (JPEG's DCT is the
orthonormal DCT-II), division by the standard quantisation tables (ITU-T T.81 Annex K, quality 50). An
adversary of strength eps moves every quantised coefficient by at most eps/2 (`COEFFICIENT_SCALE`):
advex-uar replaces JPEG's rounding of a coefficient c by c + eps (u - 1/2) with u in [0,1], so at eps = 1 a
coefficient moves as far as rounding moves it. The change is decoded (chroma upsampled 2x2, as JPEG's
decoder and advex-uar do), added to the image and clipped into [0,1], as advex-uar clips into [0,255].

One departure: advex-uar decodes the subsampled clean image plus the change, so even eps = 0 blurs the
chroma; here the change is added to the clean image itself, so strength 0 is the clean image and the set
(before clipping) is advex-uar's, shifted by that fixed subsampling error.

The attack is advex-uar's PGD: sign steps of eps/sqrt(n_iter) (their `get_step_size`), 200 steps (their
CIFAR-10 and ImageNet-100 calibrations), a uniform random start in the box (their `rand_init=True`).
It ascends the cross-entropy of the label (advex-uar's evaluation descends that of a random target class:
pass `y_target` for that). Each point keeps its first misclassified iterate, else its last.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._shapes import per_example
from .guards import check_batch, check_labels, eval_mode
from .losses import ce_loss

__all__ = ['JPEG_STEPS', 'COEFFICIENT_SCALE', 'LUMA_TABLE', 'CHROMA_TABLE', 'JpegCoefficients', 'rgb_to_ycbcr',
           'ycbcr_to_rgb', 'block_dct', 'block_idct', 'jpeg_coefficients', 'jpeg_decode', 'decode_change',
           'coefficient_change', 'jpeg_contains', 'jpeg_random_start', 'jpeg_attack']

JPEG_STEPS = 200           # advex-uar's calibrations: 200 steps for every attack and strength
COEFFICIENT_SCALE = 0.5    # a quantised coefficient moves by at most eps * COEFFICIENT_SCALE
_BLOCK = 8
_MULTIPLE = 2 * _BLOCK     # 8x8 blocks of chroma subsampled 2x2: images in 16x16 macroblocks

# ITU-T T.81 Annex K, Tables K.1 and K.2; row = vertical frequency, column = horizontal
LUMA_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float64)
CHROMA_TABLE = torch.full((8, 8), 99.0, dtype=torch.float64)
CHROMA_TABLE[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])

# JFIF (ITU-T T.871): Y = Kr R + Kg G + Kb B, Cb = (B - Y) / (2 (1 - Kb)), Cr = (R - Y) / (2 (1 - Kr)),
# chroma offset by 128 on the 8-bit scale
_KR, _KB = 0.299, 0.114
_Y = torch.tensor([_KR, 1 - _KR - _KB, _KB], dtype=torch.float64)
_RGB_TO_YCBCR = torch.stack([_Y, (torch.tensor([0., 0., 1.], dtype=torch.float64) - _Y) / (2 * (1 - _KB)),
                             (torch.tensor([1., 0., 0.], dtype=torch.float64) - _Y) / (2 * (1 - _KR))])
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)
_OFFSET = torch.tensor([0.0, 128 / 255, 128 / 255], dtype=torch.float64)


def _dct_matrix() -> torch.Tensor:
    """(8, 8) orthonormal DCT-II: row k is frequency k (JPEG's 1/4 C(u) C(v) normalisation in 2-D)."""
    k, n = torch.arange(_BLOCK, dtype=torch.float64)[:, None], torch.arange(_BLOCK, dtype=torch.float64)[None]
    scale = torch.full_like(k, math.sqrt(2 / _BLOCK))
    scale[0] = math.sqrt(1 / _BLOCK)
    return scale * torch.cos(math.pi * (2 * n + 1) * k / (2 * _BLOCK))


_DCT = _dct_matrix()


class JpegCoefficients(NamedTuple):
    """Quantised JPEG coefficients (or a change of them), each 8x8 block in place of its pixels:
    luma (N, 1, H, W) and 4:2:0 chroma (N, 2, H/2, W/2), Cb then Cr."""
    luma: torch.Tensor
    chroma: torch.Tensor

    def linf(self) -> torch.Tensor:
        """(N,) the largest absolute coefficient of each image."""
        return torch.maximum(self.luma.flatten(1).abs().amax(1), self.chroma.flatten(1).abs().amax(1))


def _colour(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W): the 3x3 `matrix` applied to every pixel's channels."""
    return torch.einsum('ij,njhw->nihw', matrix.to(x), x)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0,1] -> JFIF YCbCr on the same scale (chroma centred at 128/255)."""
    return _colour(_RGB_TO_YCBCR, x) + _OFFSET.to(x)[:, None, None]


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) JFIF YCbCr (as `rgb_to_ycbcr` gives it) -> RGB; the exact inverse, unclipped."""
    return _colour(_YCBCR_TO_RGB, x - _OFFSET.to(x)[:, None, None])


def _blocks(t: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., H/8, W/8, 8, 8)."""
    *lead, h, w = t.shape
    return t.reshape(*lead, h // _BLOCK, _BLOCK, w // _BLOCK, _BLOCK).transpose(-3, -2)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    """(..., H/8, W/8, 8, 8) -> (..., H, W)."""
    *lead, hb, wb, _, _ = b.shape
    return b.transpose(-3, -2).reshape(*lead, hb * _BLOCK, wb * _BLOCK)


def _check_blocks(t: torch.Tensor, multiple: int = _BLOCK) -> None:
    h, w = t.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"the JPEG transform needs image height and width that are multiples of {multiple}, "
                         f"got {h}x{w}: crop or pad the images first")


def block_dct(t: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., H, W): the orthonormal 2-D DCT-II of every 8x8 block, in its place."""
    _check_blocks(t)
    d = _DCT.to(t)
    return _unblocks(d @ _blocks(t) @ d.T)


def block_idct(t: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., H, W): the inverse of `block_dct`."""
    _check_blocks(t)
    d = _DCT.to(t)
    return _unblocks(d.T @ _blocks(t) @ d)


def _quantised(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(..., H, W) 8-bit-scale plane -> its quantised (unrounded) coefficients."""
    d = _DCT.to(plane)
    return _unblocks(d @ _blocks(plane) @ d.T / table.to(plane))


def _dequantised(coef: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The inverse of `_quantised`."""
    d = _DCT.to(coef)
    return _unblocks(d.T @ (_blocks(coef) * table.to(coef)) @ d)


def _upsample(t: torch.Tensor) -> torch.Tensor:
    """(..., H/2, W/2) -> (..., H, W): every value repeated over 2x2 pixels (JPEG's 4:2:0 decoding)."""
    return t.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"the JPEG threat needs RGB images (N, 3, H, W), got shape {tuple(x.shape)}")
    _check_blocks(x, _MULTIPLE)


def jpeg_coefficients(x: torch.Tensor) -> JpegCoefficients:
    """The quantised, unrounded JPEG coefficients of x (N, 3, H, W) in [0,1], H and W multiples of 16:
    YCbCr on the 8-bit scale less 128 (JPEG's level shift), chroma averaged over 2x2 pixels, block DCT,
    divided by the Annex K tables."""
    _check_images(x)
    planes = rgb_to_ycbcr(x) * 255 - 128
    return JpegCoefficients(_quantised(planes[:, :1], LUMA_TABLE),
                            _quantised(F.avg_pool2d(planes[:, 1:], 2), CHROMA_TABLE))


def decode_change(delta: JpegCoefficients) -> torch.Tensor:
    """(N, 3, H, W): the change of the [0,1] image that the change `delta` of quantised coefficients makes
    (linear: no level shift, no clipping)."""
    luma = _dequantised(delta.luma, LUMA_TABLE)
    chroma = _upsample(_dequantised(delta.chroma, CHROMA_TABLE))
    return _colour(_YCBCR_TO_RGB, torch.cat([luma, chroma], dim=1)) / 255


def jpeg_decode(coefficients: JpegCoefficients) -> torch.Tensor:
    """(N, 3, H, W): the image the quantised coefficients decode to (unclipped); `jpeg_decode(jpeg_coefficients(x))`
    is x with its chroma averaged over 2x2 pixels."""
    planes = torch.cat([_dequantised(coefficients.luma, LUMA_TABLE),
                        _upsample(_dequantised(coefficients.chroma, CHROMA_TABLE))], dim=1)
    return ycbcr_to_rgb((planes + 128) / 255)


def coefficient_change(x: torch.Tensor, x_adv: torch.Tensor) -> tuple[JpegCoefficients, torch.Tensor]:
    """(change, residual) from x to x_adv (N, 3, H, W), in float64: the change of quantised coefficients
    that 4:2:0 JPEG can carry, and (N, 2, H, W) the chroma change (8-bit scale) it cannot (zero exactly
    when x_adv - x is a decoded coefficient change)."""
    _check_images(x)
    planes = _colour(_RGB_TO_YCBCR, (x_adv.double() - x.double()) * 255)
    chroma = F.avg_pool2d(planes[:, 1:], 2)
    change = JpegCoefficients(_quantised(planes[:, :1], LUMA_TABLE), _quantised(chroma, CHROMA_TABLE))
    return change, planes[:, 1:] - _upsample(chroma)


def _pixel_bound(h: int, w: int) -> torch.Tensor:
    """(3, H, W) float64: how far each RGB pixel (on the [0,1] scale) can move when every quantised
    coefficient moves by at most 1."""
    basis = (_DCT[:, :, None, None] * _DCT[None, None, :, :]).abs()          # (u, i, v, j): |D_ui D_vj|
    luma = torch.einsum('uivj,uv->ij', basis, LUMA_TABLE).repeat(h // _BLOCK, w // _BLOCK)
    chroma = _upsample(torch.einsum('uivj,uv->ij', basis, CHROMA_TABLE)).repeat(h // _MULTIPLE, w // _MULTIPLE)
    planes = torch.stack([luma, chroma, chroma])                              # (3, H, W): Y, Cb, Cr
    return torch.einsum('ij,jhw->ihw', _YCBCR_TO_RGB.abs(), planes) / 255


def _all_in(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) bool -> (N, H/size, W/size): True where every pixel of the size x size block is."""
    return -F.max_pool2d(-mask.double()[:, None], size)[:, 0] > 0


def _block_max(t: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/size, W/size): the largest |value| over each block and the channels."""
    return F.max_pool2d(t.abs(), size).amax(1)


def jpeg_contains(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """(N,) bool: x_adv (N, 3, H, W) passes the check of membership in the JPEG threat of strength eps
    around x (N, 3, H, W) that eatai makes from the two images: exact without clipping, necessary with it.

    Without clipping the check is exact: x_adv - x must decode from a coefficient change (its chroma
    change constant on 2x2 pixels), of l-inf size at most eps/2. A pixel of x_adv at 0 or 1 may have been
    clipped, which hides its true value; the check then asks, as necessary conditions: x_adv in [0,1];
    every pixel within the largest move a change of size eps/2 allows there; the coefficient bound on
    every 8x8 luma block and 16x16 chroma block that no such pixel touches; the 2x2 chroma form on every
    2x2 group without one. Tolerances cover float rounding only (4 ulp of x_adv's dtype per pixel)."""
    _check_images(x)
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    radius = float(eps) * COEFFICIENT_SCALE
    ulp = 4 * torch.finfo(x_adv.dtype).eps                               # per pixel, on [0,1]
    coef_tol = 255 * _BLOCK * ulp / float(LUMA_TABLE.min())              # an 8x8 DCT sums 64 pixels' errors
    change, residual = coefficient_change(x, x_adv)
    flat = x_adv.flatten(1)
    inside = (flat.amin(1) >= 0) & (flat.amax(1) <= 1)
    bound = _pixel_bound(*x.shape[-2:]).to(x.device) * radius + ulp
    inside &= ((x_adv.double() - x.double()).abs() <= bound).flatten(1).all(1)
    free = ((x_adv > 0) & (x_adv < 1)).all(1)                           # (N, H, W): surely not clipped
    luma = _block_max(change.luma, _BLOCK).masked_fill(~_all_in(free, _BLOCK), 0)
    chroma = _block_max(change.chroma, _BLOCK).masked_fill(~_all_in(free, _MULTIPLE), 0)
    form = _block_max(residual, 2).masked_fill(~_all_in(free, 2), 0)
    inside &= (luma.flatten(1).amax(1) <= radius + coef_tol) & (chroma.flatten(1).amax(1) <= radius + coef_tol)
    return inside & (form.flatten(1).amax(1) <= 255 * 2 * ulp)


def _check_strength(eps, step_size, n_iter) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}")
    if step_size is not None and (isinstance(step_size, bool) or not isinstance(step_size, (int, float))
                                  or not math.isfinite(step_size) or step_size < 0):
        raise ValueError(f"step_size must be a finite number >= 0, got {step_size!r}")


def _n_coefficients(h: int, w: int) -> int:
    """Coefficients of an H x W image: H W of luma, H W / 4 of each chroma plane."""
    return h * w + 2 * (h // 2) * (w // 2)


def _uniform(x: torch.Tensor, generators) -> torch.Tensor:
    """(N, 3HW/2) uniform numbers in [-1, 1], one coefficient each: row i from `generators[i]`, or all rows
    from one generator (None: torch's global one), drawn on the CPU in float32, returned in float64 on x's device."""
    n, size = len(x), _n_coefficients(*x.shape[-2:])
    if isinstance(generators, (list, tuple)):
        if len(generators) != n:
            raise ValueError(f"generators must hold one generator per point ({n}), got {len(generators)}")
        u = torch.stack([torch.rand(size, generator=g) for g in generators]) if n else torch.zeros(0, size)
    else:
        u = torch.rand(n, size, generator=generators)
    return (2 * u - 1).to(x.device, torch.float64)


def _split(flat: torch.Tensor, h: int, w: int) -> JpegCoefficients:
    """(N, 3HW/2) -> luma (N, 1, H, W) and chroma (N, 2, H/2, W/2) views."""
    luma, chroma = flat.split([h * w, _n_coefficients(h, w) - h * w], dim=1)
    return JpegCoefficients(luma.reshape(-1, 1, h, w), chroma.reshape(-1, 2, h // 2, w // 2))


def _perturbed(x: torch.Tensor, delta: JpegCoefficients) -> torch.Tensor:
    """(N, 3, H, W): x plus the decoded change, clipped into [0,1]. The change is decoded in float64 (no TF32
    or half-precision matmuls), so `jpeg_contains` recovers it to the rounding of x's dtype."""
    return (x + decode_change(delta).to(x.dtype)).clamp(0, 1)


def jpeg_random_start(x: torch.Tensor, eps: float, generators=None) -> tuple[torch.Tensor, JpegCoefficients]:
    """(x_start, delta): every quantised coefficient of x (N, 3, H, W) moved by a uniform draw in
    [-eps/2, eps/2], decoded and clipped into [0,1]. generators: one CPU generator per point, or one for all
    (None: torch's global generator); the draws do not depend on eps, only their scale does."""
    _check_images(x)
    _check_strength(eps, None, 0)
    flat = _uniform(x, generators) * (float(eps) * COEFFICIENT_SCALE)
    delta = _split(flat, *x.shape[-2:])
    return _perturbed(x, delta), delta


def jpeg_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_iter: int = JPEG_STEPS,
                step_size: float | None = None, generators=None, random_start: bool = True,
                y_target: torch.Tensor | None = None) -> tuple[torch.Tensor, JpegCoefficients]:
    """advex-uar's JPEG-L_inf PGD on x (N, 3, H, W) in [0,1] (H, W multiples of 16), labels y (N,).

    eps, step_size: advex-uar's units (quantised coefficients move by eps/2 at most, by step_size/2 per
    step); step_size defaults to eps / sqrt(n_iter). generators: one CPU generator per point for its random
    start (batch invariance), one for all, or None (torch's global one). y_target: descend the
    cross-entropy of these classes instead of ascending that of y (advex-uar evaluates towards random
    targets). Returns (x_adv, delta): per point its first misclassified iterate, else its last, and the
    coefficient change (float64) it decodes from: |delta| <= eps/2 and
    x_adv = clip(x + decode_change(delta) in x's dtype, 0, 1).
    n_iter + 1 forwards, n_iter backwards; no host sync inside the loop."""
    _check_strength(eps, step_size, n_iter)
    y_max = check_batch(x, y)
    _check_images(x)
    if y_target is not None and tuple(y_target.shape) != tuple(y.shape):
        raise ValueError(f"y_target must have the shape of y {tuple(y.shape)}, got {tuple(y_target.shape)}")
    radius = float(eps) * COEFFICIENT_SCALE
    if step_size is None:
        step_size = float(eps) / math.sqrt(n_iter) if n_iter else 0.0
    step = float(step_size) * COEFFICIENT_SCALE
    x, y = x.detach(), y.detach().long()
    h, w = x.shape[-2:]
    flat = (_uniform(x, generators) * radius if random_start         # (N, 3HW/2) float64
            else torch.zeros(len(x), _n_coefficients(h, w), dtype=torch.float64, device=x.device))
    fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    with eval_mode(model), torch.enable_grad():
        for i in range(n_iter + 1):
            last = i == n_iter
            flat = flat.detach().requires_grad_(not last)
            x_adv = _perturbed(x, _split(flat, h, w))                      # (N, 3, H, W)
            logits = model(x_adv)
            if i == 0:
                check_labels(y, logits, y_max)
                if y_target is not None:
                    check_labels(y_target.long(), logits)
                best_x, best_flat = x_adv.detach(), flat.detach()
            else:   # a point keeps its first misclassified iterate
                best_x = torch.where(per_example(fooled, x), best_x, x_adv.detach())
                best_flat = torch.where(fooled[:, None], best_flat, flat.detach())
            fooled = fooled | (logits.detach().argmax(1) != y)
            if last:
                break
            loss = ce_loss(logits, y) if y_target is None else -ce_loss(logits, y_target.long())
            grad, = torch.autograd.grad(loss.sum(), flat)
            flat = (flat.detach() + step * grad.sign()).clamp(-radius, radius)
    return best_x, _split(best_flat, h, w)
