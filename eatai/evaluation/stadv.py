"""The spatial-flow threat 'stadv:<bound>' (Xiao et al., ICLR 2018; bounded as in Laidlaw et al., ICLR 2021).

The strength is the flow's l-inf bound in grid_sample's normalised coordinates, as perceptual-advex's
`StAdvAttack` defines it: a pixel moves by at most bound * W / 2 pixels (0.8 pixels on CIFAR-10 at their
bound 0.05). The attack is `eatai.attacks.spatial.stadv`: 100 Adam steps (perceptual-advex's CIFAR-10
evaluation; the 'quick' budget takes the package's default 20).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attacks.spatial import STADV_ITERATIONS, apply_flow, flow_reach, random_flow, stadv
from .iterative import IterativeThreat
from .registry import AttackContext, register_threat
from .streams import point_generators

__all__ = ['StAdvThreat']

_TOLERANCE = 1e-5   # float rounding of the bilinear weights


def _window_range(x: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) each: per channel the min and max of x within `rows` x `cols` pixels of each pixel,
    the zeros grid_sample pads with counted where the window leaves the image."""
    padded = F.pad(x, (cols, cols, rows, rows), value=0.0)
    kernel = (2 * rows + 1, 2 * cols + 1)
    return -F.max_pool2d(-padded, kernel, stride=1), F.max_pool2d(padded, kernel, stride=1)


@dataclass(frozen=True)
class StAdvThreat(IterativeThreat):
    """A flow of l-inf size `strength` (normalised coordinates) applied by bilinear sampling.

    strength_range [0, 1]: a bound of 1 moves a pixel by half the image, beyond which nothing new is
    reachable in practice (the grid is clipped to the image, [-1, 1]); CIFAR-10's default is 0.05.
    """
    strength: float
    name = 'stadv'
    family = 'stadv'
    strength_label = 'flow bound'
    strength_range = (0.0, 1.0)
    paper_steps = STADV_ITERATIONS
    quick_steps = 20    # perceptual-advex's default num_iterations (PGD_ITERS)

    def contains(self, x, x_adv):
        """(N,) bool, a necessary condition decided from the images alone: x_adv lies in [0,1] and each of its
        pixels lies, per channel, within [min, max] of x's pixels in the flow's reach (`flow_reach`: the
        bound in pixels rounded up, plus 1 for the bilinear neighbours; zero where the reach leaves the
        image). A bilinear sample is a convex combination of those pixels (and of grid_sample's zero
        padding), with the same weights for every channel; the exact bound is checked on the attack's flow."""
        rows, cols = flow_reach(self.strength, x.shape[2], x.shape[3])
        low, high = _window_range(x, rows, cols)
        inside = (x_adv >= low - _TOLERANCE) & (x_adv <= high + _TOLERANCE) & (x_adv >= 0) & (x_adv <= 1)
        return inside.flatten(1).all(1)

    def random_start(self, x, generator=None):
        """x moved by a flow uniform in the bound (one draw of (H, W, 2) per image, in order, from `generator`)."""
        if self.strength == 0:
            return x.clone()
        u = torch.cat([random_flow(x.shape[1:], self.strength, generator, x) for _ in range(len(x))])
        return apply_flow(x, self.strength * u).clamp(0, 1)

    def run(self, model, x, y, n_iter, generators):
        return stadv(model, x, y, self.strength, n_iter=n_iter, generators=generators)[0]

    def attack(self, name, model, x, y, context: AttackContext):
        # the starts are keyed to the threat's name, not its strength: every bound starts a point from the
        # same u (flow / bound), so a larger bound takes the same steps, scaled (monotone in practice)
        generators = point_generators(f"{context.seed}|{self.name}|{name}", x, y)
        return self.run(model, x, y, self.steps(context.budget), generators)

    def quick_attack(self, model, x, y, n_iter, seed):
        return self.run(model, x, y, n_iter, point_generators(f"{seed}|{self.name}|quick", x, y))


register_threat('stadv', StAdvThreat, default_strength={'cifar10': 0.05}, overwrite=True)
