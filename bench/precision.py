"""What mixed precision does to attack strength: robust accuracy under APGD (our attack, the
evaluation budget) of the same model with the attack run in fp32 and under bf16 autocast
(and fp16 on a GPU). Expect the figures within a point of each other.

    python bench/precision.py [--n 500] [--n-iter 100] [--checkpoint <eatai checkpoint>]
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from eatai.attacks import EVALUATION, apgd
from eatai.data import load_sample
from eatai.demo import DEMO_CHECKPOINT
from eatai.models import load_checkpoint
from eatai.threats import default_threats


def robust_accuracy(model, x, y, threat, dtype, n_iter, bs):
    """Fraction of points still correct after APGD-CE, the attack's forwards under `dtype`."""
    device = x.device
    context = nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
    scale = 1024.0 if dtype is torch.float16 else 1.0
    robust = []
    for i in range(0, len(x), bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        with context:
            x_adv, _ = apgd(model, xb, yb, threat.norm, threat.eps, **{**EVALUATION, 'n_iter': n_iter},
                            seed=0, grad_scale=scale)
        with torch.no_grad():   # judged in fp32 either way
            robust.append(model(x_adv).argmax(1) == yb)
    return torch.cat(robust).float().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', default=str(DEMO_CHECKPOINT))
    parser.add_argument('--n', type=int, default=500)
    parser.add_argument('--n-iter', type=int, default=100)
    parser.add_argument('--bs', type=int, default=250)
    parser.add_argument('--out', default='precision.json')
    args = parser.parse_args()

    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model = load_checkpoint(args.checkpoint).to(device).eval()
    _, _, x, y = load_sample()
    x, y = x[:args.n].to(device), y[:args.n].to(device)
    dtypes = {'fp32': None, 'bf16': torch.bfloat16} | ({'fp16': torch.float16} if device.type == 'cuda' else {})
    rows = {}
    for threat in default_threats('cifar10'):
        rows[str(threat)] = {}
        for name, dtype in dtypes.items():
            start = time.perf_counter()
            acc = robust_accuracy(model, x, y, threat, dtype, args.n_iter, args.bs)
            rows[str(threat)][name] = {'robust_accuracy': acc, 'seconds': time.perf_counter() - start}
    print(f"device={device} n={args.n} APGD-CE {args.n_iter} it., 1 random start; checkpoint {Path(args.checkpoint).name}")
    print(f"{'threat':<12}" + ''.join(f"{n:>16}" for n in dtypes) + f"{'max diff':>10}")
    for threat, r in rows.items():
        accs = [100 * r[n]['robust_accuracy'] for n in dtypes]
        print(f"{threat:<12}" + ''.join(f"{a:>9.1f}% {r[n]['seconds']:>4.0f}s" for a, n in zip(accs, dtypes))
              + f"{max(accs) - min(accs):>9.1f}")
    Path(args.out).write_text(json.dumps({'args': vars(args), 'device': str(device), 'results': rows}, indent=1))
    print(f'written to {args.out}')


if __name__ == '__main__':
    main()
