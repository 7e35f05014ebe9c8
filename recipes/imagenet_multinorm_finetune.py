"""Table 3: one epoch of E-AT fine-tuning of an l_p-robust ImageNet model.

Paper, App. A: lr 0.01 divided by 10 at each third of the epoch, batch 256, weight decay 1e-4,
APGD with 5 steps for l-inf and 15 for l1; radii 4/255 (l-inf), 2 (l2), 255 (l1).

    python recipes/imagenet_multinorm_finetune.py --model resnet50 --weights <checkpoint.pt> --data <imagenet>
    python recipes/imagenet_multinorm_finetune.py --smoke     (on the bundled CIFAR-10 sample)
"""
from eatai.learner import paper_sgd
from eatai.recipes import recipe_parser, run_recipe


def finetune(learn, a):
    learn.opt_func = paper_sgd(wd=1e-4)
    learn.eat_finetune(a.epochs, a.lr, n_iter={'linf': 5, 'l1': 15} if not a.smoke else a.n_iter)


def main(argv=None):
    parser = recipe_parser(__doc__.splitlines()[0], epochs=1, lr=0.01, bs=256, dataset='imagenet')
    args = parser.parse_args(argv)
    dls = None
    if not args.smoke:
        from eatai.data import imagenet_dls
        dls = imagenet_dls(args.data, bs=args.bs)
    else:
        args.dataset = 'cifar10'   # the smoke run uses 32x32 images: CIFAR-10's radii
    run_recipe(args, 'imagenet_multinorm_finetune', 'E-AT fine-tuning on ImageNet (paper Table 3)',
               [('+ E-AT FT', finetune)], dls=dls)


if __name__ == '__main__':
    main()
