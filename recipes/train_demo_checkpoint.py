"""Train the bundled demo checkpoint: eatai's small CIFAR CNN with l-inf adversarial training.

It is trained with eatai's own `fit_adversarial(scheme='linf')` on the 20,000 CIFAR-10
training images of ../shared/data (paper settings: SGD, momentum 0.9, weight decay 5e-4,
10 APGD steps, eps 8/255, lr / 10 for the last eighth of the epochs), then saved with
`save_checkpoint` together with how it was made.

    python recipes/train_demo_checkpoint.py --epochs 15 --out eatai/checkpoints/cifar_cnn_linf.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fastai.torch_core import set_seed

from eatai.all import build_model, cifar10_dls, robust_learner, save_checkpoint

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default=str(HERE.parent.parent / 'shared' / 'data'), help='folder with the CIFAR-10 .npz files')
    parser.add_argument('--n-train', type=int, default=None, help='use only this many training images')
    parser.add_argument('--epochs', type=int, default=15)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--bs', type=int, default=128)
    parser.add_argument('--width', type=int, default=32)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=str(HERE.parent / 'eatai' / 'checkpoints' / 'cifar_cnn_linf.pt'))
    args = parser.parse_args(argv)

    set_seed(args.seed)
    dls = cifar10_dls(bs=args.bs, path=args.data, n_train=args.n_train)
    learn = robust_learner(dls, build_model('cifar_cnn', 10, width=args.width))
    start = time.perf_counter()
    learn.fit_adversarial(args.epochs, lr=args.lr, scheme='linf')
    seconds = time.perf_counter() - start
    meta = {'trained_with': 'fit_adversarial', 'scheme': 'linf', 'epochs': args.epochs, 'lr': args.lr, 'bs': args.bs,
            'n_train': len(dls.train_ds), 'seed': args.seed, 'seconds': round(seconds),
            'command': 'python recipes/train_demo_checkpoint.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
            'history': learn.adversarial_training.history}
    path = save_checkpoint(learn.model, args.out, 'cifar_cnn', {'width': args.width}, meta=meta)
    print(f'saved {path} ({seconds / 60:.1f} min)')


if __name__ == '__main__':
    main()
