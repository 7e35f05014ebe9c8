"""Parameter counts of eatai's CIFAR architectures next to the published ones, and seconds per
training step (forward + backward + SGD step, through `build_model`'s `Normalized` wrapper) at a
small batch on this machine. The figure is the median over `--steps` steps after one warm-up step.

    OMP_NUM_THREADS=1 python bench/architectures.py [--bs 8] [--steps 3] [--names wrn_28_10 ...] [--out architectures.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eatai.models import build_model

# name: (published parameters, where the figure comes from)
PUBLISHED = {
    'preact_resnet18': (11.17e6, 'PreAct ResNet-18 (He et al. 2016), CIFAR-10'),
    'preact_resnet18_softplus': (11.17e6, "the paper's Table 1 model"),
    'resnet50_cifar': (23.5e6, 'ResNet-50, CIFAR-10 (Engstrom2019Robustness)'),
    'wrn_28_10': (36.5e6, 'WRN-28-10 (Zagoruyko & Komodakis 2016)'),
    'wrn_34_20': (184.5e6, 'WRN-34-20 (Rice et al. 2020, Gowal et al. 2020)'),
    'wrn_70_16': (267e6, 'WRN-70-16 (Gowal et al. 2020)'),
    'wrn_28_10_dm': (36.5e6, 'WRN-28-10, DeepMind layout'),
    'wrn_34_20_dm': (184.5e6, 'WRN-34-20, DeepMind layout'),
    'wrn_70_16_dm': (267e6, 'WRN-70-16, DeepMind layout'),
    # ViTs for 32x32: ViT-S is 22.05M at 224 with 1000 classes (DeiT-S); 4x4 patches on 32x32 and 10
    # classes remove 327k position/patch and 380k head parameters (tests/test_vit.py checks the exact count)
    'vit_small_patch4_32': (22.05e6, 'ViT-S / DeiT-S (Touvron et al. 2021), 224x224, 1000 classes'),
    'xcit_small_12_p4_32': (26e6, 'XCiT-S12 (El-Nouby et al. 2021; Debenedetti et al. 2022), 1000 classes'),
}


def seconds_per_step(model, bs: int, steps: int) -> float:
    """Median seconds of one SGD training step on a random (bs, 3, 32, 32) batch in [0,1]."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.rand(bs, 3, 32, 32), torch.randint(0, 10, (bs,))
    model.train()
    times = []
    for i in range(steps + 1):  # the first step allocates buffers and momentum: not timed
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bs', type=int, default=8)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--names', nargs='*', default=list(PUBLISHED))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None, help='also write the JSON here')
    args = parser.parse_args()

    rows = []
    print(f"device=cpu threads={torch.get_num_threads()} bs={args.bs} median of {args.steps} steps after 1 warm-up")
    print(f"{'architecture':<26}{'params':>14}{'published':>12}{'diff':>8}{'s/step':>9}")
    for name in args.names:
        torch.manual_seed(args.seed)
        model = build_model(name, 10)
        n = sum(p.numel() for p in model.parameters())
        published, source = PUBLISHED.get(name, (float('nan'), ''))
        sec = seconds_per_step(model, args.bs, args.steps)
        rows.append(dict(name=name, params=n, published=published, rel_diff=n / published - 1, source=source,
                         seconds_per_step=sec))
        print(f"{name:<26}{n:>14,}{published / 1e6:>11.2f}M{100 * (n / published - 1):>7.2f}%{sec:>9.3f}", flush=True)
        del model
    result = {'args': vars(args), 'threads': torch.get_num_threads(), 'rows': rows}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
