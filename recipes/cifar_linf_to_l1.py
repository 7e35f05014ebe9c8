"""Table 4: fine-tune an l-inf-robust CIFAR-10 model for 3 epochs with l1-AT (APGD-l1).

The paper's WRN-70-16 of Gowal et al. goes from 8.1% to 70.2% l1 robust accuracy this way.

    python recipes/cifar_linf_to_l1.py --model Gowal2020Uncovering_70_16_extra --data <cifar10> --epochs 3
    python recipes/cifar_linf_to_l1.py --smoke
"""
from eatai.recipes import recipe_parser, run_recipe


def main(argv=None):
    args = recipe_parser(__doc__.splitlines()[0]).parse_args(argv)
    run_recipe(args, 'cifar_linf_to_l1', 'l-inf -> l1 fine-tuning (paper Table 4)',
               [('+ FT wrt l1', lambda learn, a: learn.transfer_finetune('l1', a.epochs, a.lr, n_iter=a.n_iter))])


if __name__ == '__main__':
    main()
