"""The JPEG threat 'jpeg:<eps>', registered: an l-inf change of the quantised JPEG coefficients.

Kang et al. 2019, "Testing robustness against unforeseen adversaries" (advex-uar's jpeg_linf), attacked by
their PGD.

Strengths are advex-uar's eps: every quantised coefficient moves by at most eps/2 (see `eatai.attacks.jpeg`).
Their CIFAR-10 calibration (README and analysis/calibrations/cifar-10/jpeg_linf.out) is 0.03125, 0.0625,
0.125, 0.25, 0.5, 1, the sizes whose adversarially trained accuracy matches that of l-inf 1, 2, 4, 8, 16,
32 /255. Of the two middle ones the default is 0.25, the one matched to l-inf 8/255, the CIFAR-10 radius.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..attacks.jpeg import JPEG_STEPS, jpeg_attack, jpeg_contains, jpeg_random_start
from .iterative import IterativeThreat
from .registry import register_threat

__all__ = ['JpegThreat', 'JPEG_CIFAR10_STRENGTHS']

JPEG_CIFAR10_STRENGTHS = (0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0)   # advex-uar's CIFAR-10 calibration


@dataclass(frozen=True)
class JpegThreat(IterativeThreat):
    """Images whose quantised JPEG coefficients (YCbCr, 4:2:0, 8x8 DCT, Annex K tables) moved by at most
    strength/2 each, clipped into [0,1]; H and W multiples of 16.

    strength_range [0, 2]: up to the largest size advex-uar calibrated (ImageNet-100's eps_6 = 2, where
    adversarially trained models keep 1% accuracy; CIFAR-10's calibration ends at 1). `contains` is exact
    where no pixel of x_adv sits at 0 or 1, a necessary condition otherwise (see `jpeg_contains`)."""
    strength: float
    name = 'jpeg'
    family = 'jpeg-pgd'
    strength_range = (0.0, 2.0)
    paper_steps = JPEG_STEPS
    quick_steps = 20
    # curves: doublings, so the default 0.25 searches 0 and advex-uar's CIFAR-10 calibration, 0.03125 to 1
    curve_ladder = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)

    def contains(self, x, x_adv):
        return jpeg_contains(x, x_adv, self.strength)

    def random_start(self, x, generator=None):
        return jpeg_random_start(x, self.strength, generator)[0]

    def run(self, model, x, y, n_iter, generators):
        return jpeg_attack(model, x, y, self.strength, n_iter=n_iter, generators=generators)[0]


register_threat('jpeg', JpegThreat, default_strength={'cifar10': 0.25}, aliases=('jpeg-linf', 'jpeg_linf'),
               overwrite=True)
