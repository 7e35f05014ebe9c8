"""Table 1: train the same architecture from scratch with each scheme and compare robustness.

Paper: PreAct ResNet-18 (softplus), 80 epochs, lr 0.05 / 10 after 70, SGD momentum 0.9, weight
decay 5e-4, batch 128, 10 attack steps; APGD for single norms and E-AT, PGD (SLIDE for l1) for
AVG, MAX, MSD and SAT. 'l2>eat@45' is the paper's "l2-init then l-inf + l1".

    python recipes/cifar_train_compare.py --data <cifar10> [--schemes linf l2 l1 eat max avg msd sat l2>eat@45]
    python recipes/cifar_train_compare.py --smoke
"""
from eatai.recipes import recipe_parser, run_recipe, training_scheme

SCHEMES = ['linf', 'l2', 'l1', 'avg', 'max', 'msd', 'sat', 'eat', 'l2>eat@45']


def main(argv=None):
    parser = recipe_parser(__doc__.splitlines()[0], epochs=80)
    parser.add_argument('--schemes', type=training_scheme, nargs='+', default=SCHEMES)
    parser.add_argument('--arch', default='preact_resnet18_softplus', help='architecture trained from scratch')
    parser.add_argument('--method', choices=['apgd', 'pgd'], help="attack for every scheme (default: the paper's)")
    args = parser.parse_args(argv)
    schemes = ['linf', 'eat', 'max', 'msd', 'l2>eat@1'] if args.smoke else args.schemes
    arch = 'cifar_cnn' if args.smoke and args.arch == parser.get_default('arch') else args.arch
    runs = [(scheme, lambda learn, a, s=scheme: learn.fit_adversarial(a.epochs + (1 if a.smoke and '>' in s else 0),
                                                                      a.lr, scheme=s, n_iter=a.n_iter, method=a.method))
            for scheme in schemes]
    run_recipe(args, 'cifar_train_compare', 'training schemes compared (paper Table 1)', runs,
               evaluate_original=False, scratch_arch=arch)


if __name__ == '__main__':
    main()
