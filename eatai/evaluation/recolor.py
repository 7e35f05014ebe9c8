"""ReColorAdv as the registered threat 'recolor:<eps>' (alias 'recoloradv'): one colour function for every pixel.

Its offsets lie on a 16 x 32 x 32 grid in rescaled CIELUV, bounded by the strength in l-inf (see `eatai.attacks.color`).

The strength is that bound in the rescaled CIELUV space (L*/100, (u* + 100)/200, (v* + 100)/200): the
CIFAR-10 default 0.06 (Laidlaw et al., ICLR 2021) lets L* move by 6 and u*, v* by 12. Its range is [0, 1]:
1 spans the whole lightness axis, beyond which a larger bound allows nothing more in L*.

Membership from the two images alone: the colour function's offsets are not in the images, so `contains`
checks the strongest necessary condition the images give, which is also what the bound means per pixel:
every pixel's colour change, x to x_adv converted into rescaled CIELUV (in float64), is at most the strength
in every channel, plus `TOLERANCE` for the float32 conversions' error, and x_adv lies in [0,1]. (Trilinear
interpolation makes each pixel's change a convex combination of grid offsets, so offsets within the bound
give a change within it; the attack shortens a change that would leave the sRGB gamut rather than clipping
the RGB values, which could enlarge the change in CIELUV; the clamp to [0,1] it applies removes only the
conversion's float error.) It does not check that the change is one function of the colour; the attack's
tests check the offsets themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attacks.color import RECOLOR_GRID, RECOLOR_ITERATIONS, random_offsets, recolor, recolor_change, recolor_image
from .iterative import IterativeThreat
from .registry import register_threat

__all__ = ['ReColorThreat', 'TOLERANCE']

TOLERANCE = 1e-5    # in rescaled CIELUV (0.001 L* units): float32 conversions err by about 1e-6 there
QUICK_STEPS = 20    # perceptual-advex's default num_iterations (PGD_ITERS), the one its training uses


def _check_rgb(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"the recolor threat needs RGB images (N, 3, H, W), got shape {tuple(x.shape)}")


@dataclass(frozen=True)
class ReColorThreat(IterativeThreat):
    """Colour functions of x whose grid offsets in rescaled CIELUV are at most `strength` in l-inf (ReColorAdv)."""
    strength: float
    name = 'recolor'
    family = 'recoloradv'
    strength_range = (0.0, 1.0)
    paper_steps = RECOLOR_ITERATIONS
    quick_steps = QUICK_STEPS
    # curves: up to 5/3 of the strength, so the default 0.06 searches up to 0.1, the largest bound of the papers
    curve_ladder = (0.0, 0.25, 0.5, 0.75, 1.0, 4 / 3, 5 / 3)

    def contains(self, x, x_adv):
        """(N,) bool: every pixel's colour change in rescaled CIELUV is within the strength (+ `TOLERANCE`),
        and x_adv lies in [0,1]."""
        _check_rgb(x)
        if x_adv.shape != x.shape:
            raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
        flat = x_adv.flatten(1)
        in_box = (flat.amin(1) >= 0) & (flat.amax(1) <= 1)
        return (self.size(x, x_adv).to(x.device) <= self.strength + TOLERANCE) & in_box

    def size(self, x, x_adv):
        """(N,) the largest colour change of any pixel in any channel (rescaled CIELUV), float64: the smallest
        strength whose check x_adv passes."""
        change = recolor_change(x, x_adv)
        return change.nan_to_num(nan=float('inf')).abs().flatten(1).amax(1).cpu()

    def random_start(self, x, generator=None):
        """x recoloured by a uniform colour shift in [-strength, strength]^3 (the attack's start), from `generator`."""
        _check_rgb(x)
        offsets = torch.cat([random_offsets(RECOLOR_GRID, generator, x) for _ in range(len(x))])
        return recolor_image(x, self.strength * offsets)

    def run(self, model, x, y, n_iter, generators):
        _check_rgb(x)
        return recolor(model, x, y, self.strength, n_iter=n_iter, generators=generators)[0]


register_threat('recolor', ReColorThreat, default_strength={'cifar10': 0.06}, aliases=('recoloradv',))
