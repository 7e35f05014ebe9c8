"""A miniature of the paper's Table 6: fine-tune an l-inf-robust CNN with E-AT and with l1-AT.

On 10,000 CIFAR-10 training images of ../shared/data: train eatai's small CNN with l-inf AT
for a few epochs, then from that same start fine-tune for 3 epochs with each scheme of
`--schemes` (default: E-AT and l1, i.e. `eat_finetune` and `transfer_finetune('l1')`; add
`max msd` for the baselines). Prints clean / l-inf / l2 / l1 / union robust accuracy of every
model (APGD-CE + APGD-T) and the seconds per epoch of each phase; writes the figures as JSON.

    python bench/finetune_mini.py [--n-train 10000] [--at-epochs 5] [--n-eval 500] [--schemes eat l1 max msd]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from fastai.torch_core import set_seed

from eatai.all import build_model, cifar10_dls, load_weights, print_results, robust_learner

HERE = Path(__file__).resolve().parent


def timed_fit(fit, n_epoch):
    start = time.perf_counter()
    fit()
    return (time.perf_counter() - start) / n_epoch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default=str(HERE.parent.parent / 'shared' / 'data'))
    parser.add_argument('--n-train', type=int, default=10000)
    parser.add_argument('--at-epochs', type=int, default=5)
    parser.add_argument('--ft-epochs', type=int, default=3)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--bs', type=int, default=128)
    parser.add_argument('--width', type=int, default=32)
    parser.add_argument('--n-eval', type=int, default=500)
    parser.add_argument('--budget', default='standard', choices=['standard', 'quick'])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--schemes', nargs='+', default=['eat', 'l1'], help='fine-tuning schemes to compare')
    parser.add_argument('--start', help='an l-inf-robust cifar_cnn to start from (a state dict saved by an earlier run, or an eatai checkpoint such as the bundled one); skips the AT phase')
    parser.add_argument('--out', default='finetune_mini.json')
    args = parser.parse_args()

    set_seed(args.seed)
    dls = cifar10_dls(bs=args.bs, path=args.data, n_train=args.n_train)
    learn = robust_learner(dls, build_model('cifar_cnn', 10, width=args.width))
    seconds = {}
    if args.start:
        load_weights(learn.model, args.start)
    else:
        seconds['linf_at'] = timed_fit(lambda: learn.fit_adversarial(args.at_epochs, args.lr, scheme='linf'),
                                       args.at_epochs)
        torch.save(learn.model.state_dict(), Path(args.out).with_suffix('.start.pt'))
    start_state = copy.deepcopy(learn.model.state_dict())
    evaluate = dict(n=args.n_eval, budget=args.budget, seed=args.seed)
    rows = [('l-inf AT', learn.robust_eval(**evaluate))]

    for scheme in args.schemes:
        set_seed(args.seed)
        ft = robust_learner(dls, build_model('cifar_cnn', 10, width=args.width))
        ft.model.load_state_dict(start_state)
        seconds[scheme] = timed_fit(lambda: ft.finetune_adversarial(scheme, args.ft_epochs, args.lr), args.ft_epochs)
        rows.append((f'+ {scheme} FT', ft.robust_eval(**evaluate)))

    print_results(rows, title=f'fine-tuning an l-inf-robust CNN ({args.n_train} training images)')
    print('seconds per epoch: ' + ', '.join(f'{k} {v:.1f}' for k, v in seconds.items()))
    Path(args.out).write_text(json.dumps({'args': vars(args), 'seconds_per_epoch': seconds,
                                          'results': {name: r.to_dict() for name, r in rows}}, indent=1))
    print(f'written to {args.out}')


if __name__ == '__main__':
    main()
