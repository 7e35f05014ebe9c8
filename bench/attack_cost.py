"""What a 10-step APGD attack costs, against the compute floor of its forward and backward passes.

For eatai's small CIFAR CNN and a PreAct ResNet-18 at 32x32 (batch 128): the time of
`apgd(..., n_iter=10)` per norm divided by 10 x the time of one forward + backward to the input
(the issue's floor; APGD itself does 11 forwards and 10 backwards, its exact floor, printed too).
Everything is timed in one run, interleaved round by round, best of `--repeats` rounds, so the
ratios hold on a loaded machine. Targets: at most 1.15 for l-inf and l2, 1.3 for l1.

    python bench/attack_cost.py [--batch 128] [--n-iter 10] [--repeats 3] [--models cifar_cnn preact_resnet18] [--out attack_cost.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from eatai.attacks import apgd
from eatai.models import build_model

EPS = {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0}
TARGET = {'linf': 1.15, 'l2': 1.15, 'l1': 1.3}


def forward_backward(model, x, y):
    """One forward and one backward to the input: the unit of work of an attack step."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    torch.autograd.grad(loss, x)


def exact_floor(model, x, y, n_iter):
    """APGD's own minimum: n_iter + 1 forwards, n_iter backwards."""
    for _ in range(n_iter):
        forward_backward(model, x, y)
    with torch.no_grad():
        model(x)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model, x, y, n_iter, repeats):
    jobs = {'fwd+bwd': lambda: forward_backward(model, x, y),
            'exact floor': lambda: exact_floor(model, x, y, n_iter)}
    jobs.update({f'apgd {norm}': (lambda norm=norm: apgd(model, x, y, norm, EPS[norm], n_iter=n_iter)) for norm in EPS})
    for fn in jobs.values():  # warm-up: allocator, kernels
        fn()
    best = {name: float('inf') for name in jobs}
    for _ in range(repeats):
        for name, fn in jobs.items():
            best[name] = min(best[name], timed(fn))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--n-iter', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--models', nargs='+', default=['cifar_cnn', 'preact_resnet18'])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out', default='attack_cost.json')
    args = parser.parse_args()

    results = {}
    for arch in args.models:
        torch.manual_seed(0)
        model = build_model(arch, 10).to(args.device).eval()
        x = torch.rand(args.batch, 3, 32, 32, device=args.device)
        y = torch.randint(0, 10, (args.batch,), device=args.device)
        best = measure(model, x, y, args.n_iter, args.repeats)
        floor = args.n_iter * best['fwd+bwd']
        results[arch] = {'seconds': best, 'floor_s': floor,
                         'ratio': {norm: best[f'apgd {norm}'] / floor for norm in EPS},
                         'ratio_to_exact_floor': {norm: best[f'apgd {norm}'] / best['exact floor'] for norm in EPS}}
        print(f"{arch}: " + ', '.join(f'{k} {v:.3f}s' for k, v in best.items()), flush=True)

    with open(args.out, 'w') as f:
        json.dump({'args': vars(args), 'results': results}, f, indent=1)
    print(f"\ndevice={args.device} batch={args.batch} n_iter={args.n_iter}; ratio = apgd / ({args.n_iter} x fwd+bwd), "
          f"in brackets / (its exact floor: {args.n_iter + 1} fwd, {args.n_iter} bwd); target l-inf, l2 <= 1.15, l1 <= 1.3")
    print(f"{'model':<18}" + ''.join(f"{norm:>18}" for norm in EPS))
    for arch, r in results.items():
        cells = [f"{r['ratio'][n]:.2f} ({r['ratio_to_exact_floor'][n]:.2f}) {'ok' if r['ratio'][n] <= TARGET[n] else 'OVER'}"
                 for n in EPS]
        print(f"{arch:<18}" + ''.join(f"{c:>18}" for c in cells))


if __name__ == '__main__':
    main()
