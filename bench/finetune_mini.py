"""A miniature of the paper's Table 6 and RAMP's fine-tuning table: fine-tune one l-inf-robust CNN
with E-AT, RAMP, l1-AT and MAX over several seeds; mean and standard deviation per scheme.

On `--n-train` CIFAR-10 training images of ../shared/data: train eatai's small CNN with l-inf AT
(or take `--start`, e.g. the bundled eatai/checkpoints/cifar_cnn_linf.pt), then from that same
start fine-tune for `--ft-epochs` epochs with each scheme of `--schemes` and each seed of
`--seeds` (seeds change the data order, augmentation and E-AT's draws). Each model is evaluated
on the first `--n-eval` test points with the quick budget (labelled as such); `--standard` adds
the full APGD-CE + APGD-T evaluation of seed 0 of E-AT, RAMP and eat-pair. A scheme 'X+trades' fine-tunes
with scheme X and the TRADES loss.

Resumable: every finished (scheme, seed) run is written to the JSON at once, and a second call
with the same settings skips the runs already there, so the table can be filled across sessions.

    python bench/finetune_mini.py --seeds 3 [--schemes eat ramp l1 max] [--standard] [--out finetune_mini.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from fastai.torch_core import set_seed

from eatai.all import TRADES, build_model, cifar10_dls, load_weights, robust_learner

HERE = Path(__file__).resolve().parent
KEYS = ('clean', 'linf', 'l2', 'l1', 'union')
# the settings a stored run depends on: a run made under other settings is never reused
SAME = ('data', 'n_train', 'at_epochs', 'ft_epochs', 'lr', 'bs', 'width', 'n_eval', 'start')
STANDARD = ('eat', 'ramp', 'eat-pair')   # the schemes whose seed 0 --standard also evaluates fully


def accuracies(result: dict) -> dict:
    """clean, linf, l2, l1, union of a `RobustResult.to_dict()`, keyed by norm."""
    robust = {t.split(':')[0]: v for t, v in result['robust'].items()}
    return {'clean': result['clean'], **{n: robust[n] for n in ('linf', 'l2', 'l1')}, 'union': result['union']}


def load_store(path: Path, args) -> dict:
    settings = {k: getattr(args, k) for k in SAME}
    if not path.exists():
        return {'settings': settings, 'start': None, 'runs': {}}
    store = json.loads(path.read_text())
    if store.get('settings') != settings:
        raise SystemExit(f"{path} holds runs made with other settings ({store.get('settings')}); "
                         f"use another --out or the same settings ({settings})")
    return store


def save_store(path: Path, store: dict) -> None:
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(store, indent=1))
    os.replace(tmp, path)   # a kill mid-write leaves the last complete file


def fit_scheme(learn, scheme: str, args):
    name, _, loss = scheme.partition('+')
    learn.finetune_adversarial(name, args.ft_epochs, args.lr, loss=TRADES() if loss == 'trades' else None)


def new_learner(dls, args):
    return robust_learner(dls, build_model('cifar_cnn', 10, width=args.width))


def start_model(store, dls, args, path: Path):
    """The l-inf-robust start, trained once and kept beside the JSON."""
    start_file = path.with_suffix('.start.pt')
    learn = new_learner(dls, args)
    if args.start:
        load_weights(learn.model, args.start)
    elif start_file.exists():
        learn.model.load_state_dict(torch.load(start_file, map_location='cpu'))
    else:
        set_seed(0)
        t = time.perf_counter()
        learn.fit_adversarial(args.at_epochs, args.lr, scheme='linf')
        store['start_seconds_per_epoch'] = (time.perf_counter() - t) / args.at_epochs
        torch.save(learn.model.state_dict(), start_file)
    if store['start'] is None:
        store['start'] = accuracies(learn.robust_eval(n=args.n_eval, budget='quick', seed=0, progress=False).to_dict())
        save_store(path, store)
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def run_one(scheme, seed, state, dls, args) -> dict:
    set_seed(seed)
    learn = new_learner(dls, args)
    learn.model.load_state_dict(state)
    t = time.perf_counter()
    with learn.no_bar():
        fit_scheme(learn, scheme, args)
    run = {'seconds_per_epoch': (time.perf_counter() - t) / args.ft_epochs,
           'quick': accuracies(learn.robust_eval(n=args.n_eval, budget='quick', seed=0, progress=False).to_dict())}
    if args.standard and seed == 0 and scheme in STANDARD:
        run['standard'] = accuracies(learn.robust_eval(n=args.n_eval, budget='standard', seed=0, progress=False).to_dict())
    return run


def summary(store, schemes) -> dict:
    """Per scheme: mean and standard deviation (n-1) over the finished seeds."""
    out = {}
    for scheme in schemes:
        runs = [r for key, r in store['runs'].items() if key.split('/')[0] == scheme]
        if not runs:
            continue
        row = {'n_seeds': len(runs), 'seconds_per_epoch': statistics.mean(r['seconds_per_epoch'] for r in runs)}
        for k in KEYS:
            values = [r['quick'][k] for r in runs]
            row[k] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan)
        out[scheme] = row
    return out


def print_summary(store, table, args):
    print(f"quick budget (APGD-CE + APGD-T, reduced iterations), first {args.n_eval} test points; "
          f"{args.n_train} training images; mean +- std over seeds")
    print(f"{'model':<14}{'seeds':>6}" + ''.join(f"{k:>15}" for k in KEYS) + f"{'s/epoch':>9}")
    if store['start']:
        print(f"{'l-inf AT':<14}{'':>6}" + ''.join(f"{100 * store['start'][k]:>15.1f}" for k in KEYS))
    for scheme, row in table.items():
        cells = ''.join(f"{100 * m:>8.1f} +-{100 * s:>4.1f}" if not math.isnan(s) else f"{100 * m:>15.1f}"
                        for m, s in (row[k] for k in KEYS))
        print(f"+ {scheme:<12}{row['n_seeds']:>6}{cells}{row['seconds_per_epoch']:>9.1f}")
    for key, run in store['runs'].items():
        if 'standard' in run:
            print(f"standard budget, {key}: " + ', '.join(f"{k} {100 * run['standard'][k]:.1f}" for k in KEYS))
    for other in table:
        if other != 'eat' and 'eat' in table:
            print(union_verdict(table, other, 'eat'))
    if 'ramp' in table and 'eat-pair' in table:
        print(union_verdict(table, 'eat-pair', 'ramp'))


def union_verdict(table, a, b) -> str:
    """Whether scheme a beats scheme b on union, in points and pooled standard deviations."""
    (m_a, s_a), (m_b, s_b) = table[a]['union'], table[b]['union']
    pooled = math.sqrt((s_a ** 2 + s_b ** 2) / 2) if not (math.isnan(s_a) or math.isnan(s_b)) else math.nan
    verdict = 'beats' if m_a > m_b else 'does not beat'
    return (f"union: {a} {verdict} {b} by {100 * (m_a - m_b):+.1f} points = "
            f"{(m_a - m_b) / pooled if pooled else math.nan:+.2f} pooled standard deviations")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default=str(HERE.parent.parent / 'shared' / 'data'))
    parser.add_argument('--n-train', type=int, default=10000)
    parser.add_argument('--at-epochs', type=int, default=5)
    parser.add_argument('--ft-epochs', type=int, default=3)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--bs', type=int, default=128)
    parser.add_argument('--width', type=int, default=32)
    parser.add_argument('--n-eval', type=int, default=500)
    parser.add_argument('--seeds', type=int, default=1, help='fine-tune each scheme with seeds 0 .. N-1')
    parser.add_argument('--schemes', nargs='+', default=['eat', 'ramp', 'l1', 'max'],
                        help="fine-tuning schemes; 'X+trades' adds the TRADES loss to scheme X")
    parser.add_argument('--standard', action='store_true', help=f"also the standard budget for seed 0 of {', '.join(STANDARD)}")
    parser.add_argument('--start', help='an l-inf-robust cifar_cnn to start from (a state dict or an eatai '
                                        'checkpoint such as eatai/checkpoints/cifar_cnn_linf.pt); skips the AT phase')
    parser.add_argument('--out', default='finetune_mini.json')
    args = parser.parse_args()

    path = Path(args.out)
    store = load_store(path, args)
    dls = cifar10_dls(bs=args.bs, path=args.data, n_train=args.n_train)
    state = start_model(store, dls, args, path)
    for seed in range(args.seeds):
        for scheme in args.schemes:
            key = f'{scheme}/{seed}'
            if key in store['runs'] and (not args.standard or seed or scheme not in STANDARD
                                         or 'standard' in store['runs'][key]):
                continue   # finished in an earlier call
            store['runs'][key] = run_one(scheme, seed, state, dls, args)
            save_store(path, store)
            print(f"finished {key}: {store['runs'][key]}", flush=True)
    store['summary'] = summary(store, args.schemes)
    save_store(path, store)
    print_summary(store, store['summary'], args)
    print(f'written to {path}')


if __name__ == '__main__':
    main()
