"""Quickstart: E-AT fine-tuning of the bundled l-inf-robust CNN on the bundled CIFAR-10 sample.

The same story as `eatai demo` and nbs/00_quickstart.ipynb, written with the public API.

    python recipes/quickstart.py [--epochs 3] [--n 500] [--budget quick]
"""
import argparse

from fastai.torch_core import set_seed

from eatai.all import arrays_dls, load_sample, print_results, robust_learner
from eatai.demo import DEMO_CHECKPOINT


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--n', type=int, default=300)
    parser.add_argument('--budget', default='quick', choices=['quick', 'standard'])
    parser.add_argument('--n-train', type=int, default=2000, help='training images of the sample to fine-tune on')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)

    set_seed(args.seed)
    x_train, y_train, x_valid, y_valid = load_sample()                     # bundled CIFAR-10 sample, in [0,1]
    dls = arrays_dls(x_train[:args.n_train], y_train[:args.n_train], x_valid, y_valid, bs=64)
    learn = robust_learner(dls, DEMO_CHECKPOINT)                           # l-inf AT, bundled
    before = learn.robust_eval(n=args.n, budget=args.budget, seed=args.seed)
    learn.eat_finetune(epochs=args.epochs, lr=args.lr)                     # the one line
    after = learn.robust_eval(n=args.n, budget=args.budget, seed=args.seed)
    print_results([('l-inf AT (bundled)', before), ('+ E-AT fine-tuning', after)], title='quickstart')


if __name__ == '__main__':
    main()
