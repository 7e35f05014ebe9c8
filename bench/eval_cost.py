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
3. `--unforeseen`: what the threats beyond l_p cost, on the first --unforeseen-n (1,000) CIFAR-10 test
   images of --data (the 10,000 test images as a uint8 .npz; the bundled sample's 500 if it is absent):
   seconds per attacked point of StAdv, ReColorAdv and JPEG at the standard budget's steps (the papers':
   100, 100, 200) against APGD-CE l-inf 8/255 (100 steps), on the first --cost-n points, twice, the faster
   run kept; the wall time of a full unforeseen evaluation (`robust_eval(unforeseen=True)`: the l_p union
   and the `UNFORESEEN` group, standard budget) with its seconds per step; the 15 corruptions x 5
   severities (`corruption_eval`) with an empty cache (generating) and again (cached).

    python bench/eval_cost.py [--n 500] [--budget standard] [--bs 250] [--check-bs 7 32] [--autoattack] [--aa-n N]
                              [--skip-part1] [--out eval_cost.json]
    python bench/eval_cost.py --skip-part1 --unforeseen [--unforeseen-n 1000] [--cost-n 200] [--data PATH]
                              [--pieces per-point corruptions full] --threads 1 --out eval_cost_unforeseen.json

(On a busy machine use --threads 1: two torch threads on two shared cores spent most of their time waiting,
40 s per point of APGD-CE instead of under 1 s. The pieces may run as separate processes and be merged.)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

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


DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'cifar10_test.npz'


def test_images(path, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first n test images of a CIFAR-10 .npz (x: uint8 (N, 32, 32, 3), y) as (N, 3, 32, 32) floats in [0,1],
    else the bundled sample's test images; and where they came from."""
    import numpy as np
    if path and Path(path).exists():
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz['x'][:n], npz['y'][:n]
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255
        return x, torch.from_numpy(y.astype('int64')), f"first {len(y)} of {Path(path).name}"
    _, _, x, y = load_sample()
    return x[:n], y[:n], f"first {len(y[:n])} bundled sample test images"


def _step_table(result) -> dict:
    """'attack threat' -> {seconds, attacked points, seconds per point} over the result's step log."""
    rows = {}
    for s in result.steps:
        row = rows.setdefault(f"{s['attack']} {s['threat']}", {'seconds': 0.0, 'attacked': 0})
        row['seconds'] += s['seconds']
        row['attacked'] += s['attacked']
    for row in rows.values():
        row['per point'] = row['seconds'] / row['attacked'] if row['attacked'] else None
    return rows


def unforeseen_cost(model, args, out: dict) -> dict:
    """Part 3 (see the module's docstring) into `out`; writes what it has to args.out after each piece."""
    from eatai.evaluation import evaluate_robustness, get_threat
    x_all, y_all, source = test_images(args.data, args.unforeseen_n)
    out.update({'data': source, 'n': len(y_all)})
    # 1. per attacked point: one attack alone at the standard budget's steps, on the same points
    ce_only = EvalBudget('standard', attacks=('apgd-ce',))   # APGD-CE with AutoAttack's standard settings only
    singles = {'apgd-ce linf:8/255': 'linf:8/255', 'stadv stadv:0.05': 'stadv:0.05',
               'recoloradv recolor:0.06': 'recolor:0.06', 'jpeg-pgd jpeg:0.25': 'jpeg:0.25'}
    x, y = x_all[:args.cost_n], y_all[:args.cost_n]
    runs = {k: [] for k in singles}
    for _ in range(2 if 'per-point' in args.pieces else 0):   # twice, alternating, the faster kept: the machine may be shared
        for key, threat in singles.items():
            r = evaluate_robustness(model, x, y, [threat], ce_only, bs=args.bs)
            (step,) = _step_table(r).values()
            runs[key].append(step)
    if 'per-point' in args.pieces:
        _per_point(out, args, runs, len(y), {k: get_threat(t).steps(ce_only) for k, t in singles.items()
                                             if not k.startswith('apgd')})
    if 'corruptions' in args.pieces:
        _corruptions(out, args, model, x_all, y_all)
    if 'full' in args.pieces:
        _full(out, args, model, x_all, y_all)
    return out


def _per_point(out, args, runs, n, steps) -> None:
    per_point = {k: min(v, key=lambda s: s['per point']) for k, v in runs.items()}
    base = per_point['apgd-ce linf:8/255']['per point']
    out['per point'] = {'n': n, 'attacked': per_point['apgd-ce linf:8/255']['attacked'],
                        'steps': {'apgd-ce linf:8/255': 100, **steps},
                        'seconds per point': {k: v['per point'] for k, v in per_point.items()},
                        'ratio to apgd-ce linf': {k: v['per point'] / base for k, v in per_point.items()},
                        'all runs': runs}
    print(f"part 3, per attacked point ({out['per point']['attacked']} of {n} points, the faster of 2 runs):")
    for k, v in per_point.items():
        print(f"  {k:26s} {v['per point'] * 1000:7.1f} ms  {v['per point'] / base:.2f}x")
    _write(args.out, args._out)


def _corruptions(out, args, model, x_all, y_all) -> None:
    from eatai.evaluation import evaluate_robustness
    from eatai.evaluation.corruptions import CORRUPTIONS, SEVERITIES
    # 2. corruptions, 15 x 5, as corruption_eval runs them: an empty cache, then the cache it filled
    threats = [f'corruption:{c}:{s}' for c in CORRUPTIONS for s in SEVERITIES]
    home = os.environ.get('EATAI_HOME')
    with tempfile.TemporaryDirectory() as tmp:
        os.environ['EATAI_HOME'] = tmp
        try:
            first, t_first = timed(lambda: evaluate_robustness(model, x_all, y_all, threats, bs=args.bs))
            cached, t_cached = timed(lambda: evaluate_robustness(model, x_all, y_all, threats, bs=args.bs))
        finally:
            if home is None:
                os.environ.pop('EATAI_HOME', None)
            else:
                os.environ['EATAI_HOME'] = home
    assert first.flags == cached.flags
    out['corruptions'] = {'n': len(y_all), 'cells': len(threats), 'seconds first': t_first, 'seconds cached': t_cached,
                          'mCA': first.mca}
    print(f"  corruptions, {len(y_all)} points x {len(threats)} cells: {t_first:.1f} s first, {t_cached:.1f} s cached "
          f"(mCA {first.mca:.1%})")
    _write(args.out, args._out)


def _full(out, args, model, x_all, y_all) -> None:
    from eatai.evaluation import UNFORESEEN, evaluate_robustness
    # 3. the full unforeseen evaluation, as robust_eval(unforeseen=True) builds it
    lp = [str(t) for t in default_threats('cifar10')]
    extra = [t for t in UNFORESEEN['cifar10'] if t not in lp]
    full, t_full = timed(lambda: evaluate_robustness(model, x_all, y_all, lp + extra, 'standard', bs=args.bs,
                                                     union=lp, groups={'unforeseen': extra}))
    out['full'] = {'n': len(y_all), 'threats': lp + extra, 'union': lp, 'group': extra, 'budget': full.budget,
                   'seconds': t_full, 'seconds per threat': full.seconds, 'steps': _step_table(full),
                   'clean': full.clean, 'robust': full.robust, 'union accuracy': full.union,
                   'unforeseen': full.summary()['unforeseen']}
    print(f"  full unforeseen evaluation, {len(y_all)} points: {t_full:.0f} s ({t_full / 60:.1f} min)")
    for k, v in out['full']['steps'].items():
        print(f"    {k:26s} {v['seconds']:7.1f} s on {v['attacked']} points")
    _write(args.out, args._out)


def _write(path, out: dict) -> None:
    if path:
        with open(path, 'w') as f:
            json.dump(out, f, indent=1)


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
    p.add_argument('--unforeseen', action='store_true', help='also part 3: the cost of the threats beyond l_p')
    p.add_argument('--unforeseen-n', type=int, default=1000, help='test points for part 3')
    p.add_argument('--cost-n', type=int, default=200, help="part 3's points for the per-point costs")
    p.add_argument('--pieces', nargs='+', default=['per-point', 'corruptions', 'full'],
                   choices=['per-point', 'corruptions', 'full'], help="part 3's pieces (default all)")
    p.add_argument('--data', default=str(DATA), help="part 3's CIFAR-10 test images (.npz; default ../shared/data's)")
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
    args._out = out
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
    if args.unforeseen:
        load = os.getloadavg()[0]
        out['provenance']['note'] = f"a shared machine: load average {load:.1f} before part 3, on {os.cpu_count()} cores"
        unforeseen_cost(model, args, out.setdefault('part3', {}))
        out['provenance']['note'] += f", {os.getloadavg()[0]:.1f} after"
    _write(args.out, out)
    return out


if __name__ == '__main__':
    main()
