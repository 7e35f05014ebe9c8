"""Table 4: fine-tune an l_p-robust CIFAR-10 model for 3 epochs to become robust in l_q.

    python recipes/cifar_transfer.py --model <id-or-checkpoint> --target l1 --data <cifar10>
    python recipes/cifar_transfer.py --smoke --target l2
"""
from eatai.recipes import recipe_parser, run_recipe


def main(argv=None):
    parser = recipe_parser(__doc__.splitlines()[0])
    parser.add_argument('--target', nargs='+', default=['l1'], choices=['linf', 'l2', 'l1'],
                        help='the norm(s) to fine-tune for, each from the same start')
    args = parser.parse_args(argv)
    runs = [(f'+ FT wrt {norm}', lambda learn, a, norm=norm: learn.transfer_finetune(norm, a.epochs, a.lr, n_iter=a.n_iter))
            for norm in args.target]
    run_recipe(args, 'cifar_transfer', 'l_p -> l_q fine-tuning (paper Table 4)', runs)


if __name__ == '__main__':
    main()
