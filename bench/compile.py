"""Eager against `torch.compile`: seconds per 10-step APGD on a PreAct ResNet-18, and where the attack breaks the graph.

Three ways to run the same `apgd(model, x, y, norm, eps, n_iter=10)` (the E-AT training attack):

    eager           the model and the attack as they are
    compiled model  `model.compile()` (what `robust_learner(..., compile=True)` does): every forward and
                    backward of the attack is compiled, the attack's per-step bookkeeping runs eagerly
    + attack        the compiled model and `torch.compile(apgd)`: dynamo also compiles the attack's own
                    tensor code between its graph breaks (listed below the table)

Each is timed best of `--repeats` rounds after a warm-up call (the warm-up, compilation included, is
reported apart), interleaved round by round so the figures hold on a loaded machine; the compiled
attacks' points are compared with the eager ones. The graph breaks come from `torch._dynamo.explain`
of `torch.compile(apgd)` on a small batch (2 steps: every break of the loop shows up once per call site).

    flock /tmp/eatai-heavy.lock python bench/compile.py [--batch 32] [--norms linf l1] [--backend inductor]
                                                        [--repeats 2] [--out bench/results/compile.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch._dynamo as dynamo
import torch.nn.functional as F

from eatai.attacks import apgd
from eatai.models import build_model

EPS = {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0}
VARIANTS = ('eager', 'compiled model', '+ attack')


def forward_backward(model, x, y):
    """One forward and one backward to the input in eval mode: the unit of an attack step."""
    x = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x), y), x)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def graph_breaks(model, x, y, norm, n_iter=2) -> dict:
    """Graphs and graph breaks of `torch.compile(apgd)`, the breaks grouped by reason and place."""
    dynamo.reset()
    explained = dynamo.explain(apgd)(model, x, y, norm, EPS[norm], n_iter)
    where = Counter()
    for b in explained.break_reasons:
        frames = [f for f in b.user_stack if 'eatai' in f.filename][-2:]
        place = ' <- '.join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
        where[f"{b.reason.splitlines()[0][:140]} @ {place}"] += 1
    dynamo.reset()
    return {'graphs': explained.graph_count, 'breaks': explained.graph_break_count, 'ops': explained.op_count,
            'reasons': dict(where.most_common())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='preact_resnet18')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--n-iter', type=int, default=10)
    parser.add_argument('--norms', nargs='+', default=['linf', 'l1'], choices=list(EPS))
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--backend', default='inductor', help="torch.compile backend ('inductor', 'aot_eager', ...)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--no-explain', action='store_true', help='skip the graph-break listing')
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'compile.json'))
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    torch.manual_seed(0)
    eager = build_model(args.arch, 10).to(device).eval()
    compiled = build_model(args.arch, 10).to(device).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(backend=args.backend)
    attack = torch.compile(apgd, backend=args.backend)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    jobs = {'fwd+bwd': {'eager': lambda: forward_backward(eager, x, y),
                        'compiled model': lambda: forward_backward(compiled, x, y)}}
    for norm in args.norms:
        run = dict(norm=norm, eps=EPS[norm], n_iter=args.n_iter)
        jobs[f'apgd {norm}'] = {'eager': lambda run=run: apgd(eager, x, y, **run),
                                'compiled model': lambda run=run: apgd(compiled, x, y, **run),
                                '+ attack': lambda run=run: attack(compiled, x, y, **run)}
    first, points = {}, {}
    for job, fns in jobs.items():   # warm-up: compilation, allocator, kernels
        for variant, fn in fns.items():
            first[(job, variant)], points[(job, variant)] = timed(fn, device)
            print(f"first call {job:<10} {variant:<15} {first[(job, variant)]:8.2f} s", flush=True)
    best = {key: float('inf') for key in first}
    for _ in range(args.repeats):
        for job, fns in jobs.items():
            for variant, fn in fns.items():
                best[(job, variant)] = min(best[(job, variant)], timed(fn, device)[0])

    results = {}
    for job, fns in jobs.items():
        row = results[job] = {}
        for variant in fns:
            seconds = best[(job, variant)]
            row[variant] = {'seconds': seconds, 'speedup': best[(job, 'eager')] / seconds,
                            'first_call_s': first[(job, variant)],
                            'compile_s': max(first[(job, variant)] - best[(job, variant)], 0.0)}
            if job.startswith('apgd') and variant != 'eager':   # the same points as eager, up to rounding?
                (xa, ca), (xb, cb) = points[(job, 'eager')], points[(job, variant)]
                row[variant]['max_abs_diff'] = (xa - xb).abs().max().item()
                row[variant]['same_flags'] = (ca == cb).float().mean().item()

    breaks = {}
    if not args.no_explain:
        for norm in args.norms:
            breaks[norm] = graph_breaks(eager, x[:4], y[:4], norm)
    breaks['model'] = {'graphs': (m := dynamo.explain(eager)(x[:4])).graph_count, 'breaks': m.graph_break_count}

    print(f"\n{args.arch}, batch {args.batch}, {args.n_iter}-step APGD, {args.device}, backend {args.backend}, "
          f"{torch.get_num_threads()} threads: seconds (best of {args.repeats}), speedup over eager")
    print(f"{'':<12}" + ''.join(f"{v:>24}" for v in VARIANTS))
    for job, row in results.items():
        print(f"{job:<12}" + ''.join(f"{row[v]['seconds']:>13.3f} s ({row[v]['speedup']:4.2f}x)" if v in row
                                     else f"{'':>24}" for v in VARIANTS))
    print("first calls (compilation): " + ', '.join(f"{job} {v} {r['first_call_s']:.1f} s"
                                                     for job, row in results.items() for v, r in row.items()
                                                     if v != 'eager'))
    for job, row in results.items():
        for v, r in row.items():
            if 'max_abs_diff' in r:
                print(f"{job} {v}: max |x_adv - eager x_adv| = {r['max_abs_diff']:.2e}, "
                      f"flags equal on {100 * r['same_flags']:.0f}%")
    for what, b in breaks.items():
        print(f"\ntorch.compile({'apgd' if what != 'model' else args.arch}{', ' + what if what != 'model' else ''}): "
              f"{b['graphs']} graphs, {b['breaks']} breaks")
        for reason, n in b.get('reasons', {}).items():
            print(f"  {n}x {reason}")

    out = {'provenance': {'command': 'python ' + ' '.join([sys.argv[0]] + sys.argv[1:]),
                          'date': datetime.date.today().isoformat(),
                          'machine': f"{platform.machine()} {args.device}, {torch.get_num_threads()} threads",
                          'torch': torch.__version__},
           'args': vars(args), 'results': results, 'graph_breaks': breaks}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == '__main__':
    main()
