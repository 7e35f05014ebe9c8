"""What gradient projection adds to a training epoch: seconds of the training phase of a clean
epoch, of an l-inf AT epoch and of an l-inf AT epoch with `GradientProjection`, in interleaved
rounds (best of `--repeats`) on the same model and data, and the seconds spent inside GP's own
hooks (snapshot, natural steps, combination) in the GP run. GP must add no more than one clean
epoch (RAMP notes, item 4): its natural pass is one clean forward and backward per batch.
`--clock cpu` (the default) counts this process's CPU seconds, which a machine shared with other
jobs disturbs less than wall time; run it with one thread (OMP_NUM_THREADS=1) for that.

    OMP_NUM_THREADS=1 python bench/gp_cost.py [--n-train 1024] [--repeats 3] [--schemes linf eat] [--clock cpu]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed

from eatai.all import GradientProjection, arrays_dls, build_model, robust_learner
from eatai.data import load_sample


CLOCK = {'cpu': time.process_time, 'wall': time.perf_counter}
clock = CLOCK['cpu']


class TimedGP(GradientProjection):
    """GradientProjection that adds up the seconds of its own hooks."""

    def before_fit(self):
        super().before_fit()
        self.seconds = 0.0

    def _timed(self, hook):
        start = clock()
        hook()
        self.seconds += clock() - start

    def before_train(self):
        self._timed(super().before_train)

    def after_step(self):
        self._timed(super().after_step)

    def after_train(self):
        self._timed(super().after_train)


class TrainStart(Callback):
    """Starts the clock before every other callback's before_train (GP's snapshot included)."""
    order = -100

    def before_train(self):
        self.start = clock()


class TrainEnd(Callback):
    """Stops it after every other callback's after_train (GP's combination included); validation,
    the same for every run, is left out."""
    order = 1000

    def __init__(self, start: TrainStart):
        self.clock = start

    def after_train(self):
        self.seconds = clock() - self.clock.start


def time_train_phase(run: str, dls, state, args) -> tuple[float, float]:
    """Seconds of one training phase of `run` ('clean', a scheme, or '<scheme>+GP') and of GP's hooks in it."""
    set_seed(args.seed)
    learn = robust_learner(dls, build_model('cifar_cnn', 10, width=args.width), check_data=False)
    learn.model.load_state_dict(state)
    start = TrainStart()
    end = TrainEnd(start)
    cbs = [start, end]
    scheme, gp = run.removesuffix('+GP'), (TimedGP() if run.endswith('+GP') else None)
    with learn.no_bar(), learn.no_logging():
        if scheme == 'clean':
            learn.fit(1, 0.01, cbs=cbs)
        else:
            learn.fit_adversarial(1, 0.01, scheme=scheme, cbs=cbs + ([gp] if gp else []))
    return end.seconds, (gp.seconds if gp else 0.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n-train', type=int, default=1024)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--bs', type=int, default=128)
    parser.add_argument('--width', type=int, default=32)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--schemes', nargs='*', default=['linf'])
    parser.add_argument('--clock', choices=list(CLOCK), default='cpu')
    parser.add_argument('--out', default='gp_cost.json')
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]

    x_train, y_train, x_valid, y_valid = load_sample()
    reps = -(-args.n_train // len(y_train))
    x_train, y_train = x_train.repeat(reps, 1, 1, 1)[:args.n_train], y_train.repeat(reps)[:args.n_train]
    dls = arrays_dls(x_train, y_train, x_valid[:args.bs], y_valid[:args.bs], bs=args.bs)
    set_seed(args.seed)
    state = copy.deepcopy(build_model('cifar_cnn', 10, width=args.width).state_dict())
    runs = ['clean'] + [r for s in args.schemes for r in (s, f'{s}+GP')]
    best, in_gp = {r: float('inf') for r in runs}, {r: float('inf') for r in runs}
    for _ in range(args.repeats):   # interleaved: a slow spell of the machine hits every run
        for r in runs:
            seconds, gp_seconds = time_train_phase(r, dls, state, args)
            best[r], in_gp[r] = min(best[r], seconds), min(in_gp[r], gp_seconds)

    print(f"device={'cuda' if torch.cuda.is_available() else 'cpu'} threads={torch.get_num_threads()} "
          f"n_train={args.n_train} bs={args.bs} 10 attack steps, training phase only, {args.clock} seconds, "
          f"best of {args.repeats}")
    print(f"{'run':<10}{'s/epoch':>9}{'/ scheme':>10}{'GP adds s':>11}{'/ clean':>9}{'in GP s':>9}{'/ clean':>9}")
    rows = {}
    for s in args.schemes:
        added = best[f'{s}+GP'] - best[s]
        rows[s] = {'seconds': best[s], 'seconds_gp': best[f'{s}+GP'], 'ratio_gp': best[f'{s}+GP'] / best[s],
                   'added_seconds': added, 'added_over_clean': added / best['clean'],
                   'in_gp_seconds': in_gp[f'{s}+GP'], 'in_gp_over_clean': in_gp[f'{s}+GP'] / best['clean']}
    print(f"{'clean':<10}{best['clean']:>9.2f}")
    for s, row in rows.items():
        print(f"{s:<10}{row['seconds']:>9.2f}{1:>10.2f}")
        print(f"{s + '+GP':<10}{row['seconds_gp']:>9.2f}{row['ratio_gp']:>10.2f}{row['added_seconds']:>11.2f}"
              f"{row['added_over_clean']:>9.2f}{row['in_gp_seconds']:>9.2f}{row['in_gp_over_clean']:>9.2f}")
    result = {'args': vars(args), 'seconds': best, 'in_gp_seconds': in_gp, 'gp': rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f'written to {args.out}')


if __name__ == '__main__':
    main()
