"""How much APGD costs beyond its forward and backward passes.

Times `apgd(..., n_iter=N)` against a bare loop of the same N+1 forwards and N input-gradient
backwards on the same model and batch, in one run (ratios are what count on a noisy machine).

    python bench/attack_overhead.py [--batch 128] [--n-iter 10] [--repeats 3] [--width 32]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from eatai.attacks import apgd


def small_cnn(width: int) -> nn.Module:
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
    return nn.Sequential(block(3, width), block(width, width), nn.MaxPool2d(2), block(width, 2 * width),
                         block(2 * width, 2 * width), nn.MaxPool2d(2), block(2 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10))


def bare_passes(model, x, y, n_iter):
    """The floor: n_iter + 1 forwards and n_iter backwards w.r.t. the input, nothing else."""
    x_adv = x.clone()
    for i in range(n_iter + 1):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction='none')
        if i < n_iter:
            grad, = torch.autograd.grad(loss.sum(), x_adv)
            x_adv = (x_adv.detach() + 1e-3 * grad.sign()).clamp(0, 1)
    return x_adv


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--n-iter', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--width', type=int, default=32)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    torch.manual_seed(0)
    model = small_cnn(args.width).to(args.device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    eps = {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0}
    floor = best_time(lambda: bare_passes(model, x, y, args.n_iter), args.repeats)
    rows = {'bare_passes_s': round(floor, 4)}
    for norm, e in eps.items():
        t = best_time(lambda: apgd(model, x, y, norm, e, n_iter=args.n_iter), args.repeats)
        rows[f'apgd_{norm}_s'] = round(t, 4)
        rows[f'apgd_{norm}_ratio'] = round(t / floor, 3)
    print(f"device={args.device} batch={args.batch} n_iter={args.n_iter} width={args.width}")
    print(f"{'what':<22}{'seconds':>10}{'/ bare':>10}")
    print(f"{'bare passes':<22}{floor:>10.3f}{1:>10.2f}")
    for norm in eps:
        print(f"{'apgd ' + norm:<22}{rows[f'apgd_{norm}_s']:>10.3f}{rows[f'apgd_{norm}_ratio']:>10.2f}")
    print(json.dumps(rows))


if __name__ == '__main__':
    main()
