"""The `eatai` command: `eatai demo`, `eatai eval`, `eatai radius`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ['main', 'build_parser']


def _demo(args) -> int:
    from .demo import DemoConfig, run_demo
    from .report import print_results
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
        Path(args.out).write_text(json.dumps({'before': result.before.to_dict(), 'after': result.after.to_dict(),
                                              'seconds': result.seconds}, indent=1))
        print(f'results written to {args.out}')
    return 0


def _eval(args) -> int:
    from .data import cifar10_dls, sample_dls
    from .learner import robust_learner
    from .report import print_results
    dls = sample_dls(bs=args.bs) if args.data == 'sample' else cifar10_dls(bs=args.bs, path=args.data)
    learn = robust_learner(dls, args.model, dataset=args.dataset)
    result = learn.robust_eval(n=args.n, threats=args.threat or None, budget=args.budget, seed=args.seed, bs=args.bs,
                               name=Path(str(args.model)).name)
    print_results([(result.model, result)])
    if args.out:
        result.to_json(args.out)
        print(f'results written to {args.out}')
    return 0


def _radius(args) -> int:
    from .geometry import hull_covers, hull_radius, union_radius
    from .threats import parse_eps
    eps1, eps_inf, p = parse_eps(args.eps1), parse_eps(args.eps_inf), parse_eps(args.p)
    print(f"d={args.d}, eps1={eps1:g}, eps_inf={eps_inf:.6g}, p={p:g}")
    print(f"largest l_p ball inside the union       (Prop. 3.1): {union_radius(eps1, eps_inf, args.d, p):.4f}")
    print(f"largest l_p ball inside the convex hull (Thm. 3.1): {hull_radius(eps1, eps_inf, args.d, p):.4f}")
    if args.eps_p is not None:
        eps_p = parse_eps(args.eps_p)
        verdict = 'covers' if hull_covers(eps_p, eps1, eps_inf, args.d, p) else 'does NOT cover'
        print(f"l1 + l-inf training {verdict} an l_{p:g} radius of {eps_p:g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='eatai', description='Multi-norm adversarial robustness (E-AT, Croce & Hein 2022).')
    parser.add_argument('--version', action='version', version=f"eatai {__import__('eatai').__version__}")
    sub = parser.add_subparsers(dest='command', required=True)

    demo = sub.add_parser('demo', help='fine-tune the bundled l-inf model with E-AT on the bundled sample (CPU, minutes)')
    demo.add_argument('--epochs', type=int, default=3)
    demo.add_argument('--lr', type=float, default=0.05)
    demo.add_argument('--n', type=int, default=300, help='test images to evaluate on (the sample has 500)')
    demo.add_argument('--n-train', type=int, default=None, help='fine-tune on this many sample images (default: all 2000)')
    demo.add_argument('--budget', default='quick', choices=['quick', 'standard'], help='attack budget of the evaluation')
    demo.add_argument('--seed', type=int, default=0)
    demo.add_argument('--out', help='write the results as JSON here')
    demo.add_argument('--quiet', action='store_true', help='no progress bars')
    demo.set_defaults(run=_demo)

    ev = sub.add_parser('eval', help='clean, l-inf, l2, l1 and union robust accuracy of a checkpoint')
    ev.add_argument('--model', required=True, help='an eatai checkpoint (.pt) or a timm model name')
    ev.add_argument('--data', default='sample', help="'sample' (bundled) or a CIFAR-10 folder / .npz")
    ev.add_argument('--dataset', default='cifar10', help='whose default radii to use')
    ev.add_argument('--threat', action='append', help="threat model such as 'linf:8/255' (repeatable)")
    ev.add_argument('--n', type=int, default=1000)
    ev.add_argument('--bs', type=int, default=250, help='images per attacked batch (lower it if memory runs out)')
    ev.add_argument('--budget', default='standard', choices=['quick', 'standard'])
    ev.add_argument('--seed', type=int, default=0)
    ev.add_argument('--out', help='write the result as JSON here')
    ev.set_defaults(run=_eval)

    rad = sub.add_parser('radius', help='Section 3: l_p radii inside the union and the hull of the l1 and l-inf balls')
    rad.add_argument('--eps1', default='12')
    rad.add_argument('--eps-inf', default='8/255')
    rad.add_argument('--d', type=int, default=3072, help='input dimension (CIFAR-10: 3072)')
    rad.add_argument('--p', default='2')
    rad.add_argument('--eps-p', help='an l_p radius to check against the hull (the paper\'s decision rule)')
    rad.set_defaults(run=_radius)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:   # bad input: one clear line, no traceback
        print(f"eatai {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
