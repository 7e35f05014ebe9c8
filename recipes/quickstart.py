"""Quickstart: E-AT fine-tuning of the bundled l-inf-robust CNN on the bundled CIFAR-10 sample.

The same story as `eatai demo` and nbs/00_quickstart.ipynb, written with the public API.

    python recipes/quickstart.py [--epochs 3] [--n 300] [--budget quick] [--out-dir runs]
    python recipes/quickstart.py --smoke
"""
import json
from pathlib import Path

from fastai.torch_core import set_seed

from eatai.all import arrays_dls, load_sample, print_results, robust_learner
from eatai.demo import DEMO_CHECKPOINT
from eatai.recipes import SMOKE, base_parser, positive_float, positive_int


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=positive_int, default=3)
    parser.add_argument('--lr', type=positive_float, default=0.05)
    parser.add_argument('--n', type=positive_int, default=300, help='test images to evaluate on (the sample has 500)')
    parser.add_argument('--budget', default='quick', choices=['quick', 'standard'])
    parser.add_argument('--n-train', type=positive_int, default=2000, help='training images of the sample to fine-tune on')
    args = parser.parse_args(argv)
    if args.smoke:   # the same steps on fewer images, one epoch
        args.epochs, args.n, args.n_train, args.budget = SMOKE.epochs, SMOKE.n_eval, SMOKE.n_train, 'quick'

    set_seed(args.seed)
    x_train, y_train, x_valid, y_valid = load_sample()                     # bundled CIFAR-10 sample, in [0,1]
    dls = arrays_dls(x_train[:args.n_train], y_train[:args.n_train], x_valid, y_valid, bs=64)
    learn = robust_learner(dls, DEMO_CHECKPOINT)                           # l-inf AT, bundled
    before = learn.robust_eval(n=args.n, budget=args.budget, seed=args.seed)
    learn.eat_finetune(epochs=args.epochs, lr=args.lr)                     # the one line
    after = learn.robust_eval(n=args.n, budget=args.budget, seed=args.seed)
    print_results([('l-inf AT (bundled)', before), ('+ E-AT fine-tuning', after)], title='quickstart')

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    learn.save(out / 'quickstart.pth', with_opt=False)                     # weights and E-AT statistics
    (out / 'quickstart.json').write_text(json.dumps({'args': vars(args), 'before': before.to_dict(),
                                                     'after': after.to_dict()}, indent=1))
    print(f'fine-tuned weights and results in {out}')


if __name__ == '__main__':
    main()
