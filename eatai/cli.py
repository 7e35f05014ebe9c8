"""The `eatai` command: `eatai demo`, `eatai eval`, `eatai curves`, `eatai radius`, `eatai zoo`, `eatai compare`,
`eatai export`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._utils.args import (ArgumentParser, data_source, lp_exponent, positive_float, positive_int, radius, random_seed,
                    threat_model)
from .evaluation.budget import BUDGETS
from .threats import DEFAULT_EPS, default_threats

__all__ = ['main', 'build_parser']


def _demo(args) -> int:
    from .demo import DemoConfig, run_demo
    from .evaluation import print_results
    config = DemoConfig(epochs=args.epochs, lr=args.lr, n_eval=args.n, n_train=args.n_train, budget=args.budget,
                        seed=args.seed)
    print(f"eatai demo: E-AT fine-tuning of the bundled l-inf-robust CNN on the bundled CIFAR-10 sample "
          f"({config.epochs} epochs, lr {config.lr}, evaluation on {config.n_eval} test images, {config.budget} budget)")
    result = run_demo(config, progress=not args.quiet)
    print_results(result.rows(), title='eatai demo')
    total = sum(result.seconds.values())
    print('seconds: ' + ', '.join(f'{k} {v:.0f}' for k, v in result.seconds.items()) + f', total {total:.0f}')
    if args.out:
        import json
        from .evaluation.result import RESULTS_FORMAT
        Path(args.out).write_text(json.dumps({'before': result.before.to_dict(), 'after': result.after.to_dict(),
                                              'seconds': result.seconds, 'epochs': config.epochs,   # eatai compare: cost
                                              'results_format': RESULTS_FORMAT,
                                              'eatai_version': __import__('eatai').__version__}, indent=1))
        print(f'results written to {args.out}')
    return 0


def _eval(args) -> int:
    from .data import cifar10_dls, sample_dls
    from .learner import robust_learner
    from .evaluation import print_results
    dls = sample_dls(bs=args.bs) if args.data == 'sample' else cifar10_dls(bs=args.bs, path=args.data)
    learn = robust_learner(dls, args.model, dataset=args.dataset)
    n = args.n if args.n is not None else min(1000, len(dls.valid_ds))
    threats = args.threat or None
    if args.corruptions:
        from .evaluation import CORRUPTIONS
        threats = (threats or list(default_threats(args.dataset))) + [
            f'corruption:{c}:{s}' for c in CORRUPTIONS for s in range(1, 6)]
    result = learn.robust_eval(n=n, threats=threats, budget=args.budget, seed=args.seed, bs=args.bs,
                               name=Path(str(args.model)).name, unforeseen=args.unforeseen)
    print_results([(result.model, result)])
    if args.corruptions:
        from .evaluation import corruption_table
        from rich.console import Console
        Console().print(corruption_table(result))
    if args.out:
        result.to_json(args.out)
        print(f'results written to {args.out}')
    if args.show:
        _save_figure(learn.show_adversarial(n=8, threats=args.threat or None, seed=args.seed), args.show)
    return 0


def _save_figure(fig, path) -> None:
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f'figure written to {path}')


def _curves(args) -> int:
    from .evaluation import RobustnessCurves
    from .data import cifar10_dls, sample_dls
    from .learner import robust_learner
    dls = sample_dls(bs=args.bs) if args.data == 'sample' else cifar10_dls(bs=args.bs, path=args.data)
    curves = RobustnessCurves([])
    for model in args.model:
        learn = robust_learner(dls, model, dataset=args.dataset)
        curves = curves + learn.robustness_curves(n=args.n, norms=args.norm or ('linf', 'l2', 'l1'),
                                                  n_iter=args.n_iter, bs=args.bs, seed=args.seed,
                                                  name=Path(str(model)).stem)
    print(curves)
    _save_figure(curves.plot(), args.out)
    if args.json:
        curves.to_json(args.json)
        print(f'curves written to {args.json}')
    return 0


def _radius(args) -> int:
    from .geometry import hull_covers, hull_radius, union_radius
    from .threats import parse_eps
    eps1, eps_inf, p = parse_eps(args.eps1), parse_eps(args.eps_inf), parse_eps(args.p)
    # everything is computed before anything is printed: an error never follows half an answer
    inside_union, inside_hull = union_radius(eps1, eps_inf, args.d, p), hull_radius(eps1, eps_inf, args.d, p)
    eps_p = parse_eps(args.eps_p) if args.eps_p is not None else None
    covers = hull_covers(eps_p, eps1, eps_inf, args.d, p) if eps_p is not None else None
    print(f"d={args.d}, eps1={eps1:g}, eps_inf={eps_inf:.6g}, p={p:g}")
    print(f"largest l_p ball inside the union       (Prop. 3.1): {inside_union:.4f}")
    print(f"largest l_p ball inside the convex hull (Thm. 3.1): {inside_hull:.4f}")
    if eps_p is not None:
        verdict = 'covers' if covers else 'does NOT cover'
        print(f"l1 + l-inf training {verdict} an l_{p:g} radius of {eps_p:g}")
    return 0


def _zoo_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .models.zoo import zoo_entries
    table = Table(title='eatai model zoo (paper: clean / l-inf / l2 / l1 / union %, 1000 points)')
    for column in ('id', 'dataset', 'threat', 'architecture', 'normalisation', 'source', 'paper', 'used by',
                   'verified', 'cached'):
        table.add_column(column, overflow='fold')
    for e in zoo_entries(args.dataset, args.threat):
        paper = '' if e.paper is None else ' / '.join(
            '-' if v is None else f'{v:.1f}' for v in (e.paper.clean, e.paper.linf, e.paper.l2, e.paper.l1, e.paper.union))
        table.add_row(e.id, e.dataset, e.threat, e.arch + ''.join(f' {k}={v}' for k, v in e.arch_kwargs.items()),
                      e.normalisation, f'{e.source.kind}: {e.source.location}', paper, ', '.join(e.used_by),
                      'yes' if e.verified else 'no', 'yes' if e.path.exists() else '')
    Console(width=args.width).print(table)
    return 0


def _zoo_get(args) -> int:
    from .models.zoo import ZooDownloadError, file_sha256, get_entry, zoo_download
    entry = get_entry(args.id, args.dataset, args.threat)
    try:
        path = zoo_download(entry.key, progress=not args.quiet, force=args.force)
    except ZooDownloadError as e:
        print(f"eatai zoo get: error: {e}", file=sys.stderr)
        return 1
    print(f"{entry.key}: {path} (sha256 {file_sha256(path)})")
    return 0


def _compare(args) -> int:
    from rich.console import Console

    from .evaluation.compare import compare_results, load_results
    inputs = {Path(p).resolve() for p in args.results}
    for flag, out in (('--md', args.md), ('--html', args.html)):
        if out is not None and Path(out).resolve() in inputs:
            raise ValueError(f"{flag} {out} is one of the results files: it would be overwritten")
    rows, errors = [], []
    for path in args.results:   # every file read before anything is written: one line per bad one
        try:
            rows += load_results(path)
        except (ValueError, OSError) as e:
            errors.append(str(e) if isinstance(e, ValueError) else f"{path}: {e.strerror or e}")
    if errors:
        for line in errors:
            print(f"eatai compare: error: {line}", file=sys.stderr)
        print(f"eatai compare: nothing written ({len(errors)} of {len(args.results)} files unreadable)", file=sys.stderr)
        return 2
    comparison = compare_results(rows)
    Console(width=args.width).print(comparison)
    for what, out, write in (('Markdown', args.md, comparison.to_markdown), ('HTML', args.html, comparison.to_html)):
        if out is not None:
            write(out)
            print(f"{what} written to {out}")
    return 0


def _add_compare(sub) -> None:
    co = sub.add_parser('compare', help='results JSON files side by side, sorted by union (with training cost)')
    co.add_argument('results', nargs='+', metavar='RESULTS.json',
                    help="results files: 'eatai eval --out', a recipe's <recipe>.json, 'eatai demo --out'")
    co.add_argument('--md', metavar='OUT.md', help='also write the table as Markdown here')
    co.add_argument('--html', metavar='OUT.html',
                    help='also write a self-contained HTML page here (sortable table, union-vs-cost plot)')
    co.add_argument('--width', type=positive_int, default=None, help='table width in characters (default: the terminal)')
    co.set_defaults(run=_compare)


def _recipe_item(text: str) -> tuple:
    key, sep, value = text.partition('=')
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. scheme=eat, epochs=3), got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _export(args) -> int:
    from .models import load_model
    from .models.hub import EXPORT_FILES, export_model
    from .evaluation import RobustResult
    results = []
    for path in args.results or []:   # every file read before anything is written
        try:
            results.append(RobustResult.from_json(Path(path).read_text()))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    model = load_model(args.model)
    recipe = {**((getattr(model, 'meta', None) or {}).get('recipe') or {}), **dict(args.recipe or [])}
    folder = export_model(model, args.out, results=results, recipe=recipe, name=args.name, dataset=args.dataset,
                          license=args.license, overwrite=args.overwrite)
    print(f"{args.model} exported to {folder}: {', '.join(EXPORT_FILES)}")
    return 0


def _add_export(sub) -> None:
    ex = sub.add_parser('export', help='write a model as a Hugging Face Hub / timm folder (weights, config, card)')
    ex.add_argument('--model', required=True, help='an eatai checkpoint (.pt/.safetensors), a zoo id or a folder')
    ex.add_argument('--out', required=True, help='the folder to write (new or empty, unless --overwrite)')
    ex.add_argument('--results', action='append', metavar='RESULTS.json',
                    help="evaluation results for the model card ('eatai eval --out'; repeatable)")
    ex.add_argument('--recipe', action='append', type=_recipe_item, metavar='KEY=VALUE',
                    help='a training setting for the model card, e.g. scheme=eat epochs=3 lr=0.05 (repeatable)')
    ex.add_argument('--name', help='the model name on its card (default: the folder name)')
    ex.add_argument('--dataset', default='cifar10', choices=list(DEFAULT_EPS), help='the dataset it was evaluated on')
    ex.add_argument('--license', help='a license id for the card metadata, e.g. mit')
    ex.add_argument('--overwrite', action='store_true', help="replace the model files of a folder that is not empty")
    ex.set_defaults(run=_export)


def _add_zoo(sub) -> None:
    zoo = sub.add_parser('zoo', help='the model zoo: robust models by RobustBench id (no robustbench needed)')
    zoo_sub = zoo.add_subparsers(dest='zoo_command', required=True)
    ls = zoo_sub.add_parser('list', help='print the zoo as a table')
    ls.add_argument('--dataset', choices=['cifar10', 'imagenet'])
    ls.add_argument('--threat', choices=['linf', 'l2', 'l1'])
    ls.add_argument('--width', type=positive_int, default=None, help='table width in characters (default: the terminal)')
    ls.set_defaults(run=_zoo_list)
    get = zoo_sub.add_parser('get', help='download a zoo checkpoint into the cache ($EATAI_HOME or the torch hub folder)')
    get.add_argument('id', help="a zoo id, e.g. Gowal2020Uncovering_70_16_extra, or 'dataset/threat/id'")
    get.add_argument('--dataset', choices=['cifar10', 'imagenet'])
    get.add_argument('--threat', choices=['linf', 'l2', 'l1'])
    get.add_argument('--force', action='store_true', help='download again even if cached')
    get.add_argument('--quiet', action='store_true', help='no progress bar')
    get.set_defaults(run=_zoo_get)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog='eatai', description='Multi-norm adversarial robustness (E-AT, Croce & Hein 2022).')
    parser.add_argument('--version', action='version', version=f"eatai {__import__('eatai').__version__}")
    sub = parser.add_subparsers(dest='command', required=True)

    demo = sub.add_parser('demo', help='fine-tune the bundled l-inf model with E-AT on the bundled sample (CPU, minutes)')
    demo.add_argument('--epochs', type=positive_int, default=3)
    demo.add_argument('--lr', type=positive_float, default=0.05)
    demo.add_argument('--n', type=positive_int, default=300, help='test images to evaluate on (the sample has 500)')
    demo.add_argument('--n-train', type=positive_int, default=None, help='fine-tune on this many sample images (default: all 2000)')
    demo.add_argument('--budget', default='quick', choices=['quick', 'standard'], help='attack budget of the evaluation')
    demo.add_argument('--seed', type=random_seed, default=0)
    demo.add_argument('--out', help='write the results as JSON here')
    demo.add_argument('--quiet', action='store_true', help='no progress bars')
    demo.set_defaults(run=_demo)

    ev = sub.add_parser('eval', help='clean, l-inf, l2, l1 and union robust accuracy of a checkpoint')
    ev.add_argument('--model', required=True, help='an eatai checkpoint (.pt/.safetensors), a timm model name or a zoo id')
    ev.add_argument('--data', type=data_source, default='sample', help="'sample' (bundled) or a CIFAR-10 folder / .npz")
    ev.add_argument('--dataset', default='cifar10', choices=list(DEFAULT_EPS), help='whose default radii to use')
    ev.add_argument('--threat', '--threats', action='extend', nargs='+', type=threat_model,
                    help="threat models such as 'linf:8/255' 'stadv:0.05' (default: the paper's l-inf, l2, l1)")
    ev.add_argument('--unforeseen', action='store_true',
                    help='also the unforeseen set (larger l_p radii, StAdv, ReColorAdv, JPEG): its average and worst case')
    ev.add_argument('--corruptions', action='store_true',
                    help='also the 15 common corruptions at severities 1-5 (mCA), outside the union')
    ev.add_argument('--n', type=positive_int, default=None,
                    help='test points (default: 1000, or all of a smaller test set)')
    ev.add_argument('--bs', type=positive_int, default=250,
                    help='images per attacked batch (lower it if memory runs out)')
    ev.add_argument('--budget', default='standard', choices=BUDGETS,
                    help="'standard': APGD-CE + APGD-T (the paper's); 'autoattack': full AutoAttack; 'quick': opt-in")
    ev.add_argument('--seed', type=random_seed, default=0)
    ev.add_argument('--out', help='write the result as JSON here')
    ev.add_argument('--show', metavar='PNG', help='also save a picture of adversarial examples here')
    ev.set_defaults(run=_eval)

    cu = sub.add_parser('curves', help='robust accuracy against the radius per norm (paper Fig. 1) for checkpoints')
    cu.add_argument('--model', action='append', required=True, help='an eatai checkpoint or timm name (repeatable)')
    cu.add_argument('--out', default='curves.png', help='the picture (PNG)')
    cu.add_argument('--json', help='also write the curves as JSON here')
    cu.add_argument('--data', type=data_source, default='sample', help="'sample' (bundled) or a CIFAR-10 folder / .npz")
    cu.add_argument('--dataset', default='cifar10', choices=list(DEFAULT_EPS), help='whose radii are marked')
    cu.add_argument('--norm', action='append', type=threat_model,
                    help="'linf', 'l2', 'l1', 'stadv', 'recolor', 'jpeg' or 'l2:0.5' (repeatable; default the three l_p)")
    cu.add_argument('--n', type=positive_int, default=500)
    cu.add_argument('--n-iter', type=positive_int, default=100, help="steps of the threat's quick attack (APGD-CE for a ball) per strength")
    cu.add_argument('--bs', type=positive_int, default=250)
    cu.add_argument('--seed', type=random_seed, default=0)
    cu.set_defaults(run=_curves)

    rad = sub.add_parser('radius', help='Section 3: l_p radii inside the union and the hull of the l1 and l-inf balls')
    rad.add_argument('--eps1', type=radius, default='12')
    rad.add_argument('--eps-inf', type=radius, default='8/255')
    rad.add_argument('--d', type=positive_int, default=3072, help='input dimension (CIFAR-10: 3072)')
    rad.add_argument('--p', type=lp_exponent, default='2')
    rad.add_argument('--eps-p', type=radius, help='an l_p radius to check against the hull (the paper\'s decision rule)')
    rad.set_defaults(run=_radius)
    _add_zoo(sub)
    _add_export(sub)
    _add_compare(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:   # bad input: one clear line, no traceback
        print(f"eatai {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
