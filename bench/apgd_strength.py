"""Is eatai's 10-step training APGD as strong as AutoAttack's APGD at the same budget?

On an l-inf-robust model (the bundled demo checkpoint by default) and the bundled sample's
test images: robust accuracy under `eatai.attacks.apgd` with the paper's training settings (10
steps, no random start, momentum 0.75, l1 initial sparsity 0.05) and under
`pyautoattack.autopgd_base.APGDAttack` (10 steps, CE loss, one restart, its own settings:
random start, l1 sparsity 0.2), per norm at the paper's CIFAR-10 radii. A point counts as broken
when any iterate misclassifies it (both attacks keep that point). Expect the two within a point
or two of each other.

    python bench/apgd_strength.py [--n 500] [--n-iter 10] [--checkpoint <eatai checkpoint>] [--out apgd_strength.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from eatai.attacks import apgd
from eatai.data import load_sample
from eatai.demo import DEMO_CHECKPOINT
from eatai.models import load_checkpoint
from eatai.threats import default_threats

AA_NORM = {'linf': 'Linf', 'l2': 'L2', 'l1': 'L1'}


def batched(fn, x, y, bs):
    return torch.cat([fn(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]).float().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', default=str(DEMO_CHECKPOINT))
    parser.add_argument('--n', type=int, default=500)
    parser.add_argument('--n-iter', type=int, default=10)
    parser.add_argument('--bs', type=int, default=250)
    parser.add_argument('--out', default='apgd_strength.json')
    args = parser.parse_args()
    from pyautoattack.autopgd_base import APGDAttack

    model = load_checkpoint(args.checkpoint).eval()
    x, y = load_sample()[2:]
    x, y = x[:args.n], y[:args.n]

    def ours(threat):
        return lambda xb, yb: apgd(model, xb, yb, threat.norm, threat.eps, n_iter=args.n_iter, seed=0)[1]

    def autoattack(threat):
        attack = APGDAttack(model, n_iter=args.n_iter, norm=AA_NORM[threat.norm], eps=threat.eps, loss='ce',
                            n_restarts=1, seed=0, device='cpu')

        def run(xb, yb):
            with torch.no_grad():
                return model(attack.perturb(xb.contiguous(), yb)).argmax(1) == yb
        return run

    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    results = {}
    for threat in default_threats('cifar10'):
        row = {}
        for name, make in (('eatai', ours), ('autoattack', autoattack)):
            start = time.perf_counter()
            row[name] = batched(make(threat), x, y, args.bs)
            row[f'{name}_s'] = time.perf_counter() - start
        results[str(threat)] = row
        print(f"{threat}: eatai {row['eatai']:.3f} ({row['eatai_s']:.1f}s), autoattack {row['autoattack']:.3f} "
              f"({row['autoattack_s']:.1f}s)", flush=True)
    with open(args.out, 'w') as f:
        json.dump({'args': vars(args), 'clean': clean, 'results': results}, f, indent=1)
    print(f"\nrobust accuracy (%), {args.n} points, {args.n_iter}-step APGD-CE, clean {100 * clean:.1f}")
    print(f"{'threat':<14}{'eatai':>8}{'AutoAttack':>12}{'diff':>8}")
    for threat, row in results.items():
        print(f"{threat:<14}{100 * row['eatai']:>8.1f}{100 * row['autoattack']:>12.1f}"
              f"{100 * (row['eatai'] - row['autoattack']):>+8.1f}")


if __name__ == '__main__':
    main()
