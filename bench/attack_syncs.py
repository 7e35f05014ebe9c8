"""Host-device synchronisations per attack call, and per E-AT / RAMP training batch.

Every `item`, `bool(t)`, `int(t)`, `tolist`, `nonzero`, one-argument `where`, boolean-mask index
and the like makes the host wait for the GPU (see `eatai.attacks.syncs`). This counts them with
a TorchFunctionMode for one call of each attack at `--n-iter` steps (10 and 20 by default): APGD
in each norm (the training attack, and l1 at the evaluation budget), APGD-T, PGD, SLIDE (PGD's l1)
and MSD; and for one training batch of E-AT and of RAMP on a fastai Learner, split into the syncs
eatai makes and fastai's own. The goal: a constant number per attack call (the same for every
n_iter), at most 6. Runs on the CPU in seconds; the counts do not depend on the device.

    python bench/attack_syncs.py [--n-iter 10 20] [--batch 32] [--where] [--out bench/results/attack_syncs.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch

import eatai
from eatai.attacks import EVALUATION, apgd, apgd_targeted
from eatai.attacks.msd import msd
from eatai.attacks.pgd import pgd
from eatai.attacks.syncs import count_host_syncs
from eatai.callbacks import EAT
from eatai.models.cifar_cnn import CifarCNN

EPS = {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0}


def attacks(model, x, y):
    """name -> function of n_iter running that attack once."""
    jobs = {f'apgd {n}': (lambda k, n=n: apgd(model, x, y, n, EPS[n], n_iter=k)) for n in EPS}
    jobs['apgd l1 (evaluation)'] = lambda k: apgd(model, x, y, 'l1', EPS['l1'], seed=0, **{**EVALUATION, 'n_iter': k})
    jobs['apgd-t linf (3 targets)'] = lambda k: apgd_targeted(model, x, y, 'linf', EPS['linf'], n_iter=k,
                                                              n_target_classes=3, seed=0)
    jobs['apgd-t l1 (3 targets)'] = lambda k: apgd_targeted(model, x, y, 'l1', EPS['l1'], n_iter=k, n_target_classes=3,
                                                            seed=0)
    jobs['apgd-t linf (9 targets)'] = lambda k: apgd_targeted(model, x, y, 'linf', EPS['linf'], n_iter=k, seed=0)
    jobs.update({f'pgd {n}': (lambda k, n=n: pgd(model, x, y, n, EPS[n], n_iter=k)) for n in ('linf', 'l2')})
    jobs['slide (pgd l1)'] = lambda k: pgd(model, x, y, 'l1', EPS['l1'], n_iter=k)
    jobs['msd linf+l2+l1'] = lambda k: msd(model, x, y, EPS, n_iter=k)
    return jobs


def count(fn, where: bool):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with count_host_syncs(record_where=where) as syncs:
            fn()
    return syncs


def eat_seed(norm: str) -> int:
    """A seed for which E-AT's first draw (50/50 before any statistics) is `norm`."""
    return next(seed for seed in range(100) if EAT(seed=seed).choose() == norm)


def training_batch(scheme, n_iter: int, batch: int, where: bool):
    """Syncs of one training batch (from the first before_batch to the last after_batch) of
    `scheme` on a small CifarCNN Learner, split into eatai's and the rest (fastai's)."""
    from fastai.callback.core import Callback

    from eatai.all import Normalized, arrays_dls, robust_learner

    class Window(Callback):
        order, run_valid = -100, False   # before_batch first ...

        def __init__(self):
            self.counters = []

        def before_batch(self):
            counter = count_host_syncs(record_where=True)
            self.counters.append((counter, counter.__enter__()))

    class Close(Callback):
        order, run_valid = 1000, False   # ... after_batch last

        def __init__(self, window):
            self.window = window

        def after_batch(self):
            cm, _ = self.window.counters[-1]
            cm.__exit__(None, None, None)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2 * batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (2 * batch,), generator=g)
    dls = arrays_dls(x[:batch], y[:batch], x[batch:], y[batch:], bs=batch)
    learn = robust_learner(dls, Normalized(CifarCNN(width=8), (0.5,) * 3, (0.25,) * 3))
    window = Window()
    with warnings.catch_warnings(), learn.no_bar(), learn.no_logging():
        warnings.simplefilter('ignore')
        learn.fit_adversarial(1, lr=0.01, scheme=scheme, n_iter=n_iter, cbs=[window, Close(window)])
    syncs = window.counters[-1][1].syncs
    root = str(Path(eatai.__file__).resolve().parent)
    ours = [s for s in syncs if s.where and s.where.startswith(root)]
    theirs = [s for s in syncs if not (s.where and s.where.startswith(root))]
    return ours, theirs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n-iter', type=int, nargs='+', default=[10, 20])
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--where', action='store_true', help='also print where each sync happens')
    parser.add_argument('--out', default='bench/results/attack_syncs.json')
    args = parser.parse_args()
    torch.set_num_threads(1)

    torch.manual_seed(0)
    model = CifarCNN(width=8).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    rows = []
    for name, fn in attacks(model, x, y).items():
        # a first call may find that l1 needs a wider top-k and run again (eatai.attacks.balls.run_compacted)
        first = count(lambda: fn(max(args.n_iter)), False).total
        for k in args.n_iter:
            syncs = count(lambda: fn(k), args.where)
            rows.append({'attack': name, 'n_iter': k, 'syncs': syncs.total, 'by_kind': syncs.by_kind(),
                         'first_call_syncs': first, **({'where': syncs.by_place()} if args.where else {})})
    schemes = {f'eat batch ({norm})': lambda norm=norm: EAT(seed=eat_seed(norm)) for norm in ('linf', 'l1')}
    schemes['ramp batch (linf+l1)'] = lambda: 'ramp'
    for name, scheme in schemes.items():
        for k in args.n_iter:
            ours, theirs = training_batch(scheme(), k, args.batch, args.where)
            rows.append({'attack': name, 'n_iter': k, 'syncs': len(ours),
                         'by_kind': dict(Counter(s.kind for s in ours)), 'fastai_syncs': len(theirs),
                         'fastai_by_kind': dict(Counter(s.kind for s in theirs)),
                         **({'where': dict(Counter(f'{s.kind} at {s.where}' for s in ours + theirs))}
                            if args.where else {})})

    print(f"host syncs per call (batch {args.batch}, CifarCNN width 8, CPU); training batches: eatai's syncs, "
          "fastai's own in brackets")
    print(f"{'attack':<26}{'n_iter':>7}{'syncs':>7}  by kind (after a first call, which may run an l1 attack again wider)")
    for r in rows:
        extra = f" [fastai {r['fastai_syncs']}: {r['fastai_by_kind']}]" if 'fastai_syncs' in r else ''
        kinds = ', '.join(f'{k} {v}' for k, v in sorted(r['by_kind'].items()))
        print(f"{r['attack']:<26}{r['n_iter']:>7}{r['syncs']:>7}  {kinds}{extra}")
        if args.where:
            for place, n in r['where'].items():
                print(f"{'':<40}{n:>3}  {place}")

    out = {'command': 'python ' + ' '.join(['bench/attack_syncs.py', *sys.argv[1:]]),
           'date': datetime.date.today().isoformat(),
           'machine': f"{platform.machine()} CPU, torch {torch.__version__} (counts do not depend on the device)",
           'args': vars(args), 'results': rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(out, f, indent=1)
    print(f"\nwritten to {args.out}")


if __name__ == '__main__':
    main()
