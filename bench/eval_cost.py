"""What a multi-norm evaluation costs: the naive protocol, eatai per norm, eatai union-only;
and what full AutoAttack adds to the standard budget.

On the bundled checkpoint (eatai/checkpoints/cifar_cnn_linf.pt) and the first --n bundled
sample test images (500 at most):

1. seconds of the naive protocol (pyautoattack's AutoAttack with version='standard' settings,
   APGD-CE + APGD-T, run separately per norm on every point, as RobustBench and the authors'
   evaluation script do), of `evaluate_robustness` per norm and with `union_only=True`; the
   floor: from the per-norm run's per-point log (`result.steps`), the least work any order of
   the same attacks could have spent for the same verdicts (`eatai.evaluation.cost.cost_floor`:
   a union-robust point gets every attack in every norm, a broken point only the cheapest attack
   that broke it); union_only's seconds as a ratio to the floor (goal <= 1.15) and to the naive
   protocol; what the default round-by-round order would have cost (simulated on the same log);
   whether the flags agree (eatai's runs with each other exactly; the naive one draws its random
   starts per batch, so a few points may differ from it), all in one run, one after the other;
2. `--autoattack`: the standard budget against full AutoAttack (budget='autoattack'), per norm
   and union, with the seconds of each norm: does FAB-T or Square break a point APGD missed?

    python bench/eval_cost.py [--n 500] [--budget standard] [--bs 250] [--check-bs 7 32] [--autoattack] [--aa-n N]
                              [--skip-part1] [--out eval_cost.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

import torch

from eatai.evaluation.budget import EvalBudget
from eatai.data import load_sample
from eatai.demo import DEMO_CHECKPOINT
from eatai.evaluation import evaluate_robustness
from eatai.evaluation.cost import cost_floor, step_costs
from eatai.evaluation.lp import _configure
from eatai.models import load_model
from eatai.threats import default_threats

_AA_NORM = {'linf': 'Linf', 'l2': 'L2', 'l1': 'L1'}


def naive(model, x, y, threats, budget: EvalBudget, bs: int, seed: int = 0) -> dict:
    """pyautoattack directly, one AutoAttack per norm on every point: flags per threat and union."""
    from pyautoattack import AutoAttack
    flags = {}
    for threat in threats:
        settings = budget.settings(threat.norm)
        aa = AutoAttack(model, norm=_AA_NORM[threat.norm], eps=threat.eps, seed=seed, version='standard')
        aa.attacks_to_run, aa.verbose = ['apgd-ce', 'apgd-t'], False
        _configure(aa.apgd, settings, settings.n_restarts)       # the same settings as eatai's budget
        _configure(aa.apgd_targeted, settings, settings.n_restarts_targeted)
        aa.apgd_targeted.n_target_classes = settings.n_target_classes
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=bs)
        with torch.no_grad():
            flags[str(threat)] = (model(x_adv).argmax(1) == y).tolist()
    flags['union'] = [all(f[i] for f in flags.values()) for i in range(len(y))]
    return flags


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def simulated(per_norm, order: list[tuple[str, str]], points: list[int]) -> float:
    """Seconds that running the steps of `order` (threat, attack) on `points`, each on the points still
    union-robust, would have cost, from the per-norm run's per-point log (a verdict it did not record,
    APGD-T on a point APGD-CE broke, counts as robust: the estimate is an upper bound)."""
    costs = step_costs(per_norm.steps)
    broke = {}
    for s in per_norm.steps:
        broke.setdefault((s['threat'], s['attack']), set()).update(s['broken'])
    alive, total = set(points), 0.0
    for step in order:
        total += costs[step] * len(alive)
        alive -= broke[step]
    return total


def differ(a: list, b: list) -> list[int]:
    return [i for i, (p, q) in enumerate(zip(a, b)) if p != q]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=500, help='sample test points for part 1 (the sample has 500)')
    p.add_argument('--budget', default='standard', help="part 1's budget: 'standard' or 'quick'")
    p.add_argument('--bs', type=int, default=250)
    p.add_argument('--autoattack', action='store_true', help='also part 2: standard vs full AutoAttack')
    p.add_argument('--aa-n', type=int, default=None, help='points for part 2 (default: --n)')
    p.add_argument('--skip-part1', action='store_true')
    p.add_argument('--check-bs', type=int, nargs='*', default=[],
                   help='part 1 also runs eatai per norm with these batch sizes: are the flags the same?')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    p.add_argument('--out', help='write the figures as JSON here')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, _, x_all, y_all = load_sample()
    model = load_model(DEMO_CHECKPOINT).eval()
    threats, budget = list(default_threats('cifar10')), EvalBudget.from_name(args.budget)
    out = {'n': args.n, 'budget': budget.label, 'bs': args.bs, 'threads': torch.get_num_threads()}
    out['provenance'] = {'command': ' '.join(['python', 'bench/eval_cost.py'] + (sys.argv[1:] if argv is None else argv)),
                         'date': datetime.date.today().isoformat(), 'machine': f'{out["threads"]} CPU threads'}
    if not args.skip_part1:
        x, y = x_all[:args.n], y_all[:args.n]
        flags_naive, t_naive = timed(lambda: naive(model, x, y, threats, budget, args.bs))
        per_norm, t_per = timed(lambda: evaluate_robustness(model, x, y, threats, budget, bs=args.bs))
        union, t_union = timed(lambda: evaluate_robustness(model, x, y, threats, budget, bs=args.bs, union_only=True))
        other_bs = {bs: evaluate_robustness(model, x, y, threats, budget, bs=bs) for bs in args.check_bs}
        floor = cost_floor(per_norm)
        clean = [i for i, ok in enumerate(per_norm.flags['clean']) if ok]
        round_by_round = [(str(t), a) for a in budget.attacks for t in threats]
        learned = [(s['threat'], s['attack']) for s in union.steps[len(round_by_round):]]
        probe = union.steps[0]['attacked']   # the first chunk, where union_only learns its order
        out['part1'] = {
            'per norm, other bs: differing points': {bs: {k: differ(r.flags[k], per_norm.flags[k]) for k in r.flags}
                                                     for bs, r in other_bs.items()},
            'seconds': {'naive': t_naive, 'eatai per norm': t_per, 'eatai union_only': t_union},
            'ratio union_only / per norm': t_union / t_per, 'ratio union_only / naive': t_union / t_naive,
            'floor seconds': floor, 'ratio union_only / floor': t_union / floor,
            'ratio per norm / floor': t_per / floor, 'ratio naive / floor': t_naive / floor,
            'union_only learned order': [f"{a} {t}" for t, a in learned],
            'simulated ratio to floor': {
                'round by round (the order before)': simulated(per_norm, round_by_round, clean) / floor,
                'learned (probe round by round, then learned)':
                    (simulated(per_norm, round_by_round, clean[:probe]) + simulated(per_norm, learned, clean[probe:])) / floor},
            'robust': {'naive': {k: sum(v) / len(v) for k, v in flags_naive.items()},
                       'eatai per norm': {**per_norm.robust, 'union': per_norm.union}, 'eatai union_only': union.union},
            'union_only union == per-norm union': union.flags['union'] == per_norm.flags['union'],
            'union_only vs per-norm: differing points': differ(union.flags['union'], per_norm.flags['union']),
            'naive vs eatai per norm: differing points': {k: differ(flags_naive[k], per_norm.flags[k])
                                                          for k in flags_naive},
        }
        print(f"part 1, n={args.n}, {budget.label}, bs {args.bs}, {torch.get_num_threads()} threads")
        for name, sec in out['part1']['seconds'].items():
            print(f"  {name:18s} {sec:8.1f} s")
        print(f"  floor {floor:8.1f} s (the cheapest order of the same attacks for the same verdicts)")
        print(f"  union_only / floor {t_union / floor:.2f} (goal <= 1.15); per norm / floor {t_per / floor:.2f}; "
              f"naive / floor {t_naive / floor:.2f}")
        print(f"  union_only / per norm {t_union / t_per:.2f}; union_only / naive {t_union / t_naive:.2f}")
        print(f"  union_only's learned order: {', '.join(out['part1']['union_only learned order'])}")
        print(f"  simulated on the per-norm log, ratio to the floor: {out['part1']['simulated ratio to floor']}")
        print(f"  per norm: {per_norm}\n  union_only: {union}")
        for bs, d in out['part1']['per norm, other bs: differing points'].items():
            print(f"  per norm with bs {bs}: points whose flags differ from bs {args.bs}: {d}")
        print(f"  union_only union == per-norm union: {out['part1']['union_only union == per-norm union']}; "
              f"naive vs eatai per-norm differing points: {out['part1']['naive vs eatai per norm: differing points']}")
    if args.autoattack:
        n = args.aa_n or args.n
        x, y = x_all[:n], y_all[:n]
        std = evaluate_robustness(model, x, y, threats, 'standard', bs=args.bs)
        full = evaluate_robustness(model, x, y, threats, 'autoattack', bs=args.bs)
        extra = {k: [i for i in range(n) if std.flags[k][i] and not full.flags[k][i]] for k in std.flags}
        out['part2'] = {'n': n, 'standard': std.to_dict(), 'autoattack': full.to_dict(),
                        'broken only by FAB-T/Square': extra}
        print(f"part 2, n={n}: standard vs full AutoAttack")
        for k in [*std.threats, 'union']:
            a = std.union if k == 'union' else std.robust[k]
            b = full.union if k == 'union' else full.robust[k]
            secs = '' if k == 'union' else f"  ({std.seconds[k]:.0f} s vs {full.seconds[k]:.0f} s)"
            print(f"  {k:12s} standard {a:.1%}  autoattack {b:.1%}  broken only by FAB-T/Square: {extra[k]}{secs}")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == '__main__':
    main()
