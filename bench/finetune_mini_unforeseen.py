"""Beyond the l_p balls in the fine-tuning miniature: does multi-norm fine-tuning help against unforeseen threats?

The companion of bench/finetune_mini.py, with its settings (the bundled l-inf CNN fine-tuned for
`--ft-epochs` epochs on `--n-train` CIFAR-10 training images of ../shared/data, each scheme of
`--schemes` with each seed of `--seeds`, the same seeding, so a run repeats finetune_mini's), but
each model, and the start, is evaluated on the first `--n-eval` test points for

- clean accuracy and the l_p union (l-inf 8/255, l2 0.5, l1 12), quick budget, as finetune_mini;
- the unforeseen set `UNFORESEEN['cifar10']` (l-inf 12/255, l2 1, l1 24, StAdv 0.05, ReColorAdv 0.06,
  JPEG 0.25), outside the union, quick budget (20 steps each), summarised MultiRobustBench-style:
  the average of the six accuracies and the worst case (points robust to all six at once);
- common corruptions: CIFAR-10-C's 15 types at `--severities` (default 1..5) on the first
  `--n-corrupt` of the same points; mCA is their mean (the library's ImageNet-C parameters, harsher
  than CIFAR-10-C's: comparable between these models only).

Resumable at every step: each fine-tuned model is saved under `--runs` (default bench/.runs/, ignored
by git) before it is evaluated, each evaluation keeps its finished chunks there, and each finished
(scheme, seed) is written to the JSON at once; a second call with the same settings skips what is
done (and re-evaluates a saved model without fine-tuning it again). Runs go seed by seed, so seed 0
of every scheme comes first. Several processes may share one `--out` (e.g. one per group of schemes,
all but one with `--skip-start`): each run is merged into the JSON under a lock.

    python bench/finetune_mini_unforeseen.py [--seeds 3] [--schemes eat ramp l1 max] [--out bench/results/finetune_mini_unforeseen.json]
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from fastai.torch_core import set_seed

from eatai.all import cifar10_dls, load_weights
from eatai.evaluation import RobustResult, unforeseen_threats

from finetune_mini import HERE, fit_scheme, new_learner, save_store

# the settings a stored run depends on: a run made under other settings is never reused
SAME = ('data', 'n_train', 'ft_epochs', 'lr', 'bs', 'width', 'n_eval', 'start', 'severities', 'n_corrupt')
KEYS = ('clean', 'union', 'unforeseen_avg', 'unforeseen_worst', 'worst_all', 'mca')


def load_store(path: Path, args) -> dict:
    settings = {k: getattr(args, k) for k in SAME}
    if not path.exists():
        return {'settings': settings, 'start': None, 'runs': {}}
    store = json.loads(path.read_text())
    if store.get('settings') != settings:
        raise SystemExit(f"{path} holds runs made with other settings ({store.get('settings')}); "
                         f"use another --out or the same settings ({settings})")
    return store


def update_store(path: Path, args, key: str | None, value) -> dict:
    """Write `value` as the start (key None) or as run `key` into the JSON, merged under a lock with what other
    processes (other schemes of the same settings, `--skip-start`) wrote meanwhile; the summary is redone."""
    with open(path.with_suffix('.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = load_store(path, args)
        if key is None:
            store['start'] = value
        else:
            store['runs'][key] = value
        schemes = list(dict.fromkeys(args.schemes + [k.split('/')[0] for k in store['runs']]))
        store['summary'] = summary(store, schemes)
        store['provenance'] = provenance(store, args)
        save_store(path, store)
    return store


def save_weights(model, file: Path) -> None:
    tmp = file.with_suffix('.tmp')
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, file)   # a kill mid-write leaves no half-written model


def evaluate(learn, key: str, runs: Path, args) -> dict:
    """Evaluates the learner's model (`record` of both results); both RobustResults are kept under `runs`
    beside the weights, so that `--rescore` can recompute the record without evaluating again."""
    t = time.perf_counter()
    r = learn.robust_eval(n=args.n_eval, budget='quick', seed=0, progress=False, unforeseen=True,
                          resume_file=runs / f'{key}.eval-progress.json')
    r.to_json(runs / f'{key}.eval.json')
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    c = learn.corruption_eval(severities=args.severities, n=args.n_corrupt, progress=False,
                              resume_file=runs / f'{key}.corruption-progress.json')
    c.to_json(runs / f'{key}.corruption.json')
    return {**record(r, c), 'eval_seconds': seconds, 'corruption_seconds': time.perf_counter() - t}


def record(r: RobustResult, c: RobustResult) -> dict:
    """clean, each l_p threat of the union, the union, each unforeseen threat, their average and worst case,
    worst_all (robust to the union and to every unforeseen threat at once), mCA and its mean per severity."""
    union = [t for t in r.threats if t not in r.outside_union]
    members = r.groups['unforeseen']
    summary = r.summary(members)
    every = [r.flags['union']] + [r.flags[k] for k in members]
    severities = sorted({int(k.rsplit(':', 1)[1]) for k in c.corruptions})
    return {'clean': r.clean, **{t.split(':')[0]: r.robust[t] for t in union}, 'union': r.union,
            'unforeseen': {k: r.robust[k] for k in members},
            'unforeseen_avg': summary['average'], 'unforeseen_worst': summary['worst'],
            'worst_all': sum(all(p) for p in zip(*every)) / r.n, 'mca': c.mca,
            'mca_by_severity': {s: statistics.mean(c.robust[k] for k in c.corruptions if k.endswith(f':{s}'))
                                for s in severities}}


def rescore(path: Path, runs: Path, args) -> None:
    """Every stored record recomputed from the results kept under `runs` (its timings kept)."""
    for key in ['start'] + list(load_store(path, args)['runs']):
        stem = key.replace('/', '-')
        r, c = (RobustResult.from_json(runs / f'{stem}.{what}.json') for what in ('eval', 'corruption'))
        old = load_store(path, args)
        old = old['start'] if key == 'start' else old['runs'][key]
        new = {**old, **record(r, c)}
        update_store(path, args, None if key == 'start' else key, new)
        print(f'rescored {key}')


def summary(store, schemes) -> dict:
    """Per scheme: mean and standard deviation (n-1; None for one seed) over the finished seeds."""
    out = {}
    for scheme in schemes:
        runs = [r for key, r in store['runs'].items() if key.split('/')[0] == scheme]
        if not runs:
            continue
        row = {'n_seeds': len(runs), 'seconds_per_epoch': statistics.mean(r['seconds_per_epoch'] for r in runs)}
        for k in KEYS:
            values = [r[k] for r in runs]
            row[k] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None)
        row['unforeseen'] = {t: statistics.mean(r['unforeseen'][t] for r in runs) for t in runs[0]['unforeseen']}
        out[scheme] = row
    return out


def print_summary(store, table):
    def cell(m, s):
        return f"{100 * m:>7.1f} +-{100 * s:>4.1f}" if s is not None else f"{100 * m:>14.1f}"
    print(f"{'model':<12}{'seeds':>6}" + ''.join(f"{k:>14}" for k in KEYS))
    if store['start']:
        print(f"{'l-inf AT':<12}{'':>6}" + ''.join(f"{100 * store['start'][k]:>14.1f}" for k in KEYS))
    for scheme, row in table.items():
        print(f"+ {scheme:<10}{row['n_seeds']:>6}" + ''.join(cell(*row[k]) for k in KEYS))


def provenance(store, args) -> dict:
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    old = store.get('provenance', {})
    if args.rescore and old:
        return old   # rescoring evaluates nothing: the provenance stays the runs'
    first = old.get('date', today).split(' to ')[0]
    # every distinct command that wrote runs (processes sharing the file, later sessions resuming)
    command = 'python bench/finetune_mini_unforeseen.py ' + ' '.join(sys.argv[1:])
    commands = old.get('commands', [old['command']] if 'command' in old else [])
    commands += [command] if command not in commands else []
    return {'command': ' and '.join(commands), 'commands': commands,
            'date': first if first == today else f'{first} to {today}', 'machine': args.machine}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default=str(HERE.parent.parent / 'shared' / 'data'))
    parser.add_argument('--n-train', type=int, default=5000)
    parser.add_argument('--ft-epochs', type=int, default=3)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--bs', type=int, default=128)
    parser.add_argument('--width', type=int, default=32)
    parser.add_argument('--n-eval', type=int, default=500)
    parser.add_argument('--n-corrupt', type=int, default=500, help='points of the corruption evaluation (the first of the n-eval)')
    parser.add_argument('--severities', type=int, nargs='+', default=[1, 2, 3, 4, 5])
    parser.add_argument('--seeds', type=int, default=3, help='fine-tune each scheme with seeds 0 .. N-1')
    parser.add_argument('--schemes', nargs='+', default=['eat', 'ramp', 'l1', 'max'])
    parser.add_argument('--start', default='eatai/checkpoints/cifar_cnn_linf.pt', help='the l-inf-robust cifar_cnn to start from')
    parser.add_argument('--runs', default=str(HERE / '.runs' / 'finetune_mini_unforeseen'),
                        help='where the fine-tuned weights and the evaluations\' progress are kept (ignored by git)')
    parser.add_argument('--out', default=str(HERE / 'results' / 'finetune_mini_unforeseen.json'))
    parser.add_argument('--rescore', action='store_true',
                        help='recompute every stored record from the results kept under --runs, then stop')
    parser.add_argument('--skip-start', action='store_true',
                        help='do not evaluate the start model (another process of the same settings does)')
    parser.add_argument('--machine', default=f'{os.cpu_count()} CPU cores shared with other jobs',
                        help='the machine, for the provenance')
    args = parser.parse_args()
    # the group's members as the evaluation names them, so that a change of UNFORESEEN shows in the settings
    print('unforeseen threats:', ', '.join(unforeseen_threats('cifar10')), flush=True)

    path, runs = Path(args.out), Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    store = load_store(path, args)
    if args.rescore:
        rescore(path, runs, args)
        print_summary(load_store(path, args), load_store(path, args)['summary'])
        return
    dls = cifar10_dls(bs=args.bs, path=args.data, n_train=args.n_train)
    learn = new_learner(dls, args)
    load_weights(learn.model, args.start)
    state = {k: v.detach().clone() for k, v in learn.model.state_dict().items()}
    if store['start'] is None and not args.skip_start:
        store = update_store(path, args, None, evaluate(learn, 'start', runs, args))
        print(f"evaluated the start: {store['start']}", flush=True)
    for seed in range(args.seeds):
        for scheme in args.schemes:
            key = f'{scheme}/{seed}'
            if key in store['runs']:
                continue   # finished in an earlier call
            stem = f'{scheme}-{seed}'
            weights, meta = runs / f'{stem}.pt', runs / f'{stem}.json'
            learn = new_learner(dls, args)
            if weights.exists() and meta.exists() and json.loads(meta.read_text())['settings'] == store['settings']:
                learn.model.load_state_dict(torch.load(weights, map_location='cpu'))
                seconds = json.loads(meta.read_text())['seconds_per_epoch']
            else:   # as finetune_mini.run_one
                set_seed(seed)
                learn.model.load_state_dict(state)
                t = time.perf_counter()
                with learn.no_bar():
                    fit_scheme(learn, scheme, args)
                seconds = (time.perf_counter() - t) / args.ft_epochs
                save_weights(learn.model, weights)
                meta.write_text(json.dumps({'settings': store['settings'], 'seconds_per_epoch': seconds}))
                print(f"fine-tuned {key}: {seconds:.1f} s per epoch", flush=True)
            store = update_store(path, args, key, {'seconds_per_epoch': seconds, **evaluate(learn, stem, runs, args)})
            print(f"finished {key}: {store['runs'][key]}", flush=True)
    store = load_store(path, args)
    print_summary(store, store['summary'])
    print(f'written to {path}')


if __name__ == '__main__':
    main()
