"""Tables 8 and 9: E-AT fine-tuning for 3, 5, 7, 10 and 15 epochs from the same start (an
l-inf-robust model for Table 8, a naturally trained one for Table 9). Every run divides lr by 10
at each third of its length, as the authors' code does.

    python recipes/cifar_finetune_epochs.py --model <id-or-checkpoint> --data <cifar10> [--epoch-list 3 5 7 10 15]
    python recipes/cifar_finetune_epochs.py --smoke
"""
from eatai.recipes import positive_int, recipe_parser, run_recipe


def main(argv=None):
    parser = recipe_parser(__doc__.splitlines()[0])
    parser.add_argument('--epoch-list', type=positive_int, nargs='+', default=[3, 5, 7, 10, 15])
    args = parser.parse_args(argv)
    epochs = [1, 2] if args.smoke else args.epoch_list
    runs = [(f'+ {e} epochs FT', lambda learn, a, e=e: learn.eat_finetune(e, a.lr, n_iter=a.n_iter)) for e in epochs]
    run_recipe(args, 'cifar_finetune_epochs', 'E-AT fine-tuning for more epochs (paper Tables 8, 9)', runs)


if __name__ == '__main__':
    main()
