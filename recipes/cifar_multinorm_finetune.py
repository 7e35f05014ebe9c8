"""Table 2 / Table 6: 3 epochs of E-AT (l1 + l-inf) fine-tuning of an l_p-robust CIFAR-10 model.

    python recipes/cifar_multinorm_finetune.py --model Gowal2020Uncovering_70_16_extra --data <cifar10> [--lr 0.01]
    python recipes/cifar_multinorm_finetune.py --smoke
"""
from eatai.recipes import recipe_parser, run_recipe


def main(argv=None):
    args = recipe_parser(__doc__.splitlines()[0]).parse_args(argv)
    run_recipe(args, 'cifar_multinorm_finetune', 'E-AT fine-tuning (paper Table 2)',
               [('+ E-AT FT', lambda learn, a: learn.eat_finetune(a.epochs, a.lr, n_iter=a.n_iter))])


if __name__ == '__main__':
    main()
