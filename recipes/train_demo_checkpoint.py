"""Train the bundled demo checkpoint: eatai's small CIFAR CNN with l-inf adversarial training.

It is trained with eatai's own `fit_adversarial(scheme='linf')` on the 20,000 CIFAR-10
training images of ../shared/data (paper settings: SGD, momentum 0.9, weight decay 5e-4,
10 APGD steps, eps 8/255, lr / 10 for the last eighth of the epochs), then saved with
`save_checkpoint` together with how it was made, as <out-dir>/cifar_cnn_linf.pt.

    python recipes/train_demo_checkpoint.py --epochs 15 --out-dir eatai/checkpoints
    python recipes/train_demo_checkpoint.py --smoke     (the bundled sample, one short epoch)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from fastai.torch_core import set_seed

from eatai.all import arrays_dls, build_model, cifar10_dls, load_sample, robust_learner, save_checkpoint
from eatai.recipes import SMOKE, base_parser, existing_dir, positive_float, positive_int

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument('--data', type=existing_dir, default=None,
                        help='folder with the CIFAR-10 .npz files (default: ../shared/data; the bundled sample with --smoke)')
    parser.add_argument('--n-train', type=positive_int, default=None, help='use only this many training images')
    parser.add_argument('--epochs', type=positive_int, default=15)
    parser.add_argument('--lr', type=positive_float, default=0.05)
    parser.add_argument('--bs', type=positive_int, default=128)
    parser.add_argument('--n-iter', type=positive_int, default=10, help='APGD steps of the training attack')
    parser.add_argument('--width', type=positive_int, default=32)
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.bs, args.n_iter = SMOKE.epochs, SMOKE.bs, SMOKE.n_iter
        args.n_train = min(args.n_train or SMOKE.n_train, SMOKE.n_train)

    set_seed(args.seed)
    if args.smoke and args.data is None:
        x_train, y_train, x_valid, y_valid = load_sample()
        dls = arrays_dls(x_train[:args.n_train], y_train[:args.n_train], x_valid, y_valid, bs=args.bs)
    else:
        dls = cifar10_dls(bs=args.bs, path=args.data or HERE.parent.parent / 'shared' / 'data', n_train=args.n_train)
    learn = robust_learner(dls, build_model('cifar_cnn', 10, width=args.width))
    start = time.perf_counter()
    learn.fit_adversarial(args.epochs, lr=args.lr, scheme='linf', n_iter=args.n_iter)
    seconds = time.perf_counter() - start
    meta = {'trained_with': 'fit_adversarial', 'scheme': 'linf', 'epochs': args.epochs, 'lr': args.lr, 'bs': args.bs,
            'n_iter': args.n_iter, 'n_train': len(dls.train_ds), 'seed': args.seed, 'seconds': round(seconds),
            'command': 'python recipes/train_demo_checkpoint.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
            'history': learn.adversarial_training.history}
    path = save_checkpoint(learn.model, Path(args.out_dir) / 'cifar_cnn_linf.pt', 'cifar_cnn', {'width': args.width}, meta=meta)
    print(f'saved {path} ({seconds / 60:.1f} min)')


if __name__ == '__main__':
    main()
