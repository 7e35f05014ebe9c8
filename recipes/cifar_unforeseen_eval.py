"""Robustness beyond the l_p balls: checkpoints side by side on the l_p union, the unforeseen set and common corruptions.

Evaluation only (docs/how-to/unforeseen.md). Writes one results JSON per model (`RobustResult`, with the
unforeseen group's average and worst case, and mCA with --corruptions) and the models x threats heat map.

    python recipes/cifar_unforeseen_eval.py --models a.pt b.pt --data <cifar10> [--corruptions] [--out-dir runs]
    python recipes/cifar_unforeseen_eval.py --smoke [--corruptions]
"""
import argparse
from pathlib import Path

import matplotlib.pyplot as plt
from rich.console import Console

from eatai.all import APGDSettings, EvalBudget, print_results, robust_learner
from eatai.demo import DEMO_CHECKPOINT
from eatai.evaluation import CORRUPTIONS, corruption_table, summary_plot
from eatai.evaluation.corruptions import check_corruption
from eatai.recipes import SMOKE, base_parser, existing_dir, positive_int, recipe_dls

SLUG = 'cifar_unforeseen_eval'
SMOKE_N, SMOKE_CORRUPTIONS = 8, ('fog', 'contrast', 'pixelate')   # the cheapest to generate


def corruption_name(text: str) -> str:
    try:
        return check_corruption(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=[str(DEMO_CHECKPOINT)],
                        help='checkpoints, timm names or zoo ids to compare (default: the bundled l-inf CNN)')
    parser.add_argument('--data', type=existing_dir, help='CIFAR-10 folder (default: download; the bundled sample with --smoke)')
    parser.add_argument('--n-eval', type=positive_int, default=1000, help='test points')
    parser.add_argument('--bs', type=positive_int, default=250, help='images per attacked batch')
    parser.add_argument('--budget', default='standard', choices=['standard', 'autoattack', 'quick'])
    parser.add_argument('--corruptions', nargs='*', type=corruption_name, metavar='NAME',
                        help='also common corruptions (mCA): these, or the 15 of CIFAR-10-C when none are named')
    parser.add_argument('--severities', nargs='+', type=int, choices=range(1, 6), metavar='{1..5}',
                        help='corruption severities (default: 1-5; 3 with --smoke)')
    args = parser.parse_args(argv)
    budget = args.budget
    if args.smoke:   # a few points, 2 APGD steps; StAdv, ReColorAdv and JPEG take the quick budget's 20
        tiny, tiny_l1 = (APGDSettings(n_iter=SMOKE.n_iter, n_target_classes=1, use_largereps=l1) for l1 in (False, True))
        args.n_eval, args.bs, budget = min(args.n_eval, SMOKE_N), SMOKE.bs, EvalBudget('quick', tiny, tiny, tiny_l1)
    corruptions = None if args.corruptions is None else (
        args.corruptions or (SMOKE_CORRUPTIONS if args.smoke else CORRUPTIONS))
    severities = args.severities or ((3,) if args.smoke else range(1, 6))

    dls, out, rows = recipe_dls(args), Path(args.out_dir), {}
    out.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        name = Path(model).stem if Path(model).suffix else model
        name = name if name not in rows else f'{name} ({len(rows) + 1})'
        learn = robust_learner(dls, model)
        threats = None if corruptions is None else ['linf', 'l2', 'l1'] + [   # the paper's three, their union
            f'corruption:{c}:{s}' for c in corruptions for s in severities]
        rows[name] = learn.robust_eval(n=args.n_eval, threats=threats, budget=budget, bs=args.bs, seed=args.seed,
                                       unforeseen=True, name=name, progress=not args.smoke)
        rows[name].to_json(out / f"{SLUG}_{''.join(c if c.isalnum() else '_' for c in name)}.json")
    console = Console() if Console().is_terminal else Console(width=240)   # a log gets the wide table unwrapped
    print_results(rows, title='Robustness beyond the l_p balls (%)', console=console)
    for name, result in rows.items():
        if result.corruptions:
            console.print(corruption_table(result, title=f'{name}: accuracy under common corruptions (%)'))
    fig = summary_plot(rows)
    fig.savefig(out / f'{SLUG}_summary.png', dpi=100)
    plt.close(fig)
    print(f'results and heat map in {out}')
    return rows


if __name__ == '__main__':
    main()
