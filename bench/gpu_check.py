"""One prepared GPU measurement, eager and with `torch.compile`, written to bench/results/gpu.json.

On the first `--train-n` (20,000) shared CIFAR-10 training images, batch 128, bf16 autocast
(fastai's `to_bf16`; on a CPU fp32), channels_last model and inputs:

  epoch       seconds per training epoch (validation excluded) of l-inf AT and E-AT for a
              PreAct ResNet-18, after a warm-up of `--warmup-batches` (compilation, cuDNN), and
              their ratio E-AT / l-inf
  apgd        10-step APGD (l-inf, l1) on a batch of 128 against one forward + backward to the input:
              seconds per step and the ratio apgd / (10 x fwd+bwd)
  eval        points per second of the standard evaluation (`robust_eval(budget='standard')`, fp32:
              APGD-CE then APGD-T for l-inf, l2 and l1) of the E-AT-trained ResNet on `--eval-n` test
              points, after a warm-up evaluation of a few points; its accuracies come along, since the
              cost grows with the share of robust points
  memory      peak GPU memory (torch.cuda.max_memory_allocated) of E-AT training batches of 128 for a
              WRN-28-10 (`--memory-batches` batches, the norms drawn recorded)

each once with the eager model and once with `robust_learner(..., compile={'backend': ...})`. The
eager figures come first; a compiled section whose estimate (its eager time plus a compilation
allowance) does not fit what is left of `--budget` seconds is skipped and listed under "skipped",
and an alarm at the budget stops whatever runs then: the command ends within the budget plus the
time to write the file. The JSON is rewritten after every section, so a run stopped from outside
keeps what it measured.

    python bench/gpu_check.py                                        # one GPU, at most 8 minutes
    python bench/gpu_check.py --device cpu --tiny --out /tmp/g.json  # seconds: a tiny model and subset

`--tiny` (for the test suite) swaps in eatai's small CNN (width 4; width 8 stands in for the WRN),
64 training images in batches of 16, 2 attack steps, 8 evaluation points and backend 'aot_eager'.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import platform
import resource
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

from eatai.attacks import apgd
from eatai.attacks.guards import eval_mode
from eatai.data import arrays_dls, load_sample
from eatai.learner import robust_learner

START = time.perf_counter()
HERE = Path(__file__).resolve().parent
EPS = {'linf': 8 / 255, 'l1': 12.0}
FULL = dict(arch='preact_resnet18', arch_kwargs={}, memory_arch='wrn_28_10', memory_kwargs={}, train_n=20_000,
            bs=128, warmup_batches=20, n_iter=10, eval_n=256, eval_bs=256, memory_batches=4, backend='inductor',
            repeats=3, compile_allowance=100.0)
TINY = dict(arch='cifar_cnn', arch_kwargs={'width': 4}, memory_arch='cifar_cnn', memory_kwargs={'width': 8},
            train_n=64, bs=16, warmup_batches=1, n_iter=2, eval_n=8, eval_bs=8, memory_batches=2, backend='aot_eager',
            repeats=1, compile_allowance=5.0)


class OutOfTime(Exception):
    pass


def _alarm(signum, frame):
    raise OutOfTime()


def left(args) -> float:
    return args.budget - (time.perf_counter() - START)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class ChannelsLast(Callback):
    """Batches in channels_last before the attack (AdversarialTraining's order is 9) sees them."""
    order = 1

    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)


class TrainTimer(Callback):
    """Seconds of each training phase (the attacks and the updates; validation excluded)."""
    order = -20

    def __init__(self, device):
        self.device, self.seconds = device, []

    def before_train(self):
        sync(self.device)
        self._start = time.perf_counter()

    def after_train(self):
        sync(self.device)
        self.seconds.append(time.perf_counter() - self._start)


def load_data(args):
    """uint8 (N, 3, 32, 32) images and int64 labels: the first train_n training and the first n_valid test images
    of the shared CIFAR-10 files (with --tiny and no shared data, of eatai's bundled sample)."""
    n_valid = max(args.eval_n, args.bs)
    folder = Path(args.data)
    if args.tiny and not (folder / 'cifar10_test.npz').exists():
        x, y, xv, yv = load_sample()
        x, xv = [(v * 255).round().to(torch.uint8) for v in (x, xv)]
        args.data = 'eatai.data.load_sample()'
    else:
        train, test = np.load(folder / 'cifar10_train_20k.npz'), np.load(folder / 'cifar10_test.npz')
        x, y, xv, yv = (torch.from_numpy(a) for a in (train['x'], train['y'], test['x'], test['y']))
        x, xv = x.permute(0, 3, 1, 2), xv.permute(0, 3, 1, 2)
    return x[:args.train_n], y[:args.train_n].long(), xv[:n_valid], yv[:n_valid].long()


def make_learner(args, data, arch, arch_kwargs, n_train, compiled: bool):
    x, y, xv, yv = data
    dls = arrays_dls(x[:n_train], y[:n_train], xv, yv, bs=args.bs, drop_last=True, device=args.device)
    if compiled:   # a fresh start: dynamo's recompilation limit is shared by every compiled module of a process,
        torch._dynamo.reset()   # and one learner's training, attacks and fp32 evaluation need up to about 8 graphs
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        torch._dynamo.utils.counters.clear()
    compile = {'backend': args.backend} if compiled else False
    learn = robust_learner(dls, arch, compile=compile, cbs=[ChannelsLast()], **arch_kwargs)
    learn.model.to(memory_format=torch.channels_last)
    if args.bf16:
        learn.to_bf16()
    return learn


def fit(learn, scheme, args, cbs=()):
    with learn.no_bar(), learn.no_logging():
        learn.fit_adversarial(1, lr=0.05, scheme=scheme, n_iter=args.n_iter, cbs=list(cbs))


def epochs(learn, data, args) -> dict:
    """Seconds per training epoch of l-inf AT and E-AT on the full training set, after an E-AT warm-up."""
    full = learn.dls
    x, y, xv, yv = data
    learn.dls = arrays_dls(x[:args.warmup_batches * args.bs], y[:args.warmup_batches * args.bs], xv, yv,
                           bs=args.bs, drop_last=True, device=args.device)
    fit(learn, 'eat', args)
    learn.dls = full
    seconds = {}
    for scheme in ('linf', 'eat'):
        timer = TrainTimer(args.device)
        fit(learn, scheme, args, [timer])
        seconds[scheme] = timer.seconds[0]
    history = learn.adversarial_training.history[-1]
    return {'seconds': seconds, 'eat_over_linf': seconds['eat'] / seconds['linf'],
            'batches': len(full.train), 'images': len(full.train) * args.bs,
            'eat_freq_l1': history.get('freq_l1')}


def apgd_cost(learn, data, args) -> dict:
    """APGD's seconds per step against one forward + backward to the input, on one batch, in the training precision."""
    device, model = args.device, learn.model
    x = data[2][:args.bs].float().div(255).to(device).contiguous(memory_format=torch.channels_last)
    y = data[3][:args.bs].to(device)
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()

    def forward_backward():
        xg = x.clone().requires_grad_(True)
        with eval_mode(model):
            torch.autograd.grad(F.cross_entropy(model(xg), y, reduction='none').sum(), xg)

    jobs = {'fwd+bwd': forward_backward}
    jobs.update({f'apgd {n}': (lambda n=n: apgd(model, x, y, n, EPS[n], n_iter=args.n_iter)) for n in EPS})
    best = {}
    for name, fn in jobs.items():
        for i in range(args.repeats + 1):   # the first call is a warm-up
            with precision:
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
            if i:
                best[name] = min(best.get(name, math.inf), time.perf_counter() - start)
    unit = best['fwd+bwd']
    return {'fwd_bwd_s': unit, 'batch': len(x), 'n_iter': args.n_iter,
            **{n: {'seconds': best[f'apgd {n}'], 'step_s': best[f'apgd {n}'] / args.n_iter,
                   'ratio': best[f'apgd {n}'] / (args.n_iter * unit)} for n in EPS}}


def evaluation(learn, args) -> dict:
    """Points per second of the standard evaluation, after a warm-up on a few points."""
    for n in (8, 12):   # two sizes: compiled, the batch dimension is dynamic from the second on
        learn.robust_eval(n=min(n, args.eval_n), budget='standard', bs=args.eval_bs, progress=False)
    sync(args.device)
    start = time.perf_counter()
    result = learn.robust_eval(n=args.eval_n, budget='standard', bs=args.eval_bs, progress=False)
    sync(args.device)
    seconds = time.perf_counter() - start
    return {'n': result.n, 'seconds': seconds, 'points_per_s': result.n / seconds, 'clean': result.clean,
            'robust': result.robust, 'union': result.union, 'precision': 'fp32'}


def peak_memory(args, data, compiled: bool) -> dict:
    """Peak memory of E-AT training batches of the big model."""
    learn = make_learner(args, data, args.memory_arch, args.memory_kwargs, args.memory_batches * args.bs, compiled)
    cuda = args.device.type == 'cuda'
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
    timer = TrainTimer(args.device)
    fit(learn, 'eat', args, [timer])
    history = learn.adversarial_training.history[-1]
    peak = torch.cuda.max_memory_allocated(args.device) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {'arch': args.memory_arch, 'batch': args.bs, 'batches': args.memory_batches, 'bytes': int(peak),
           'gib': peak / 2 ** 30, 'kind': 'torch.cuda.max_memory_allocated' if cuda else
           'process max RSS (a CPU has no per-batch peak; the whole run so far)',
           'norms_drawn': {n: history.get(f'freq_{n}') for n in EPS}, 'fit_s': timer.seconds[0]}
    del learn
    return out


def _free(args):
    gc.collect()
    if args.device.type == 'cuda':
        torch.cuda.empty_cache()


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--tiny', action='store_true', help='a tiny model and subset: seconds on a CPU (the tests)')
    parser.add_argument('--out', default=str(HERE / 'results' / 'gpu.json'))
    parser.add_argument('--data', default=str(HERE.parent.parent / 'shared' / 'data'))
    parser.add_argument('--budget', type=float, default=440.0,
                        help='seconds from start: compiled sections that would not fit are skipped, an alarm stops the rest')
    parser.add_argument('--no-compile', action='store_true', help='eager figures only')
    for name, value in FULL.items():   # defaults: FULL, or TINY with --tiny
        if not isinstance(value, dict):
            parser.add_argument('--' + name.replace('_', '-'), type=type(value), default=None)
    args = parser.parse_args(argv)
    preset = TINY if args.tiny else FULL
    for name, value in preset.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.device = torch.device(args.device)
    args.bf16 = args.device.type == 'cuda'   # fastai's MixedPrecision autocasts on CUDA only
    if args.tiny and args.device.type == 'cpu':
        torch.set_num_threads(1)   # tiny tensors: a second thread only waits
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    command = 'python ' + ' '.join([sys.argv[0] if argv is None else 'bench/gpu_check.py'] +
                                   (sys.argv[1:] if argv is None else list(argv)))
    device_name = torch.cuda.get_device_name(args.device) if args.device.type == 'cuda' else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    out = {'device': device_name, 'torch': torch.__version__, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
           'command': command,
           'provenance': {'command': command, 'date': datetime.date.today().isoformat(), 'machine': device_name},
           'settings': {'arch': args.arch, 'memory_arch': args.memory_arch, 'train_images': args.train_n, 'batch': args.bs,
                        'precision': 'bf16 autocast' if args.bf16 else 'fp32', 'memory_format': 'channels_last',
                        'n_iter': args.n_iter, 'compile': {'backend': args.backend}, 'tiny': args.tiny,
                        'budget_s': args.budget},
           'results': {'eager': {}, 'compiled': {}}, 'skipped': [], 'errors': [], 'complete': False}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write():
        out['elapsed_s'] = time.perf_counter() - START
        path.write_text(json.dumps(out, indent=1, default=str))

    torch.manual_seed(0)
    data = load_data(args)
    out['settings']['data'] = str(args.data)
    variants = ['eager'] + ([] if args.no_compile else ['compiled'])
    if args.no_compile:
        out['skipped'].append('compiled: --no-compile')
    spent = {}   # eager seconds per section: the estimate of its compiled run

    def section(variant, name, fn, record=True):
        estimate = 0.0 if variant == 'eager' else 1.2 * spent.get(name, 0.0) + args.compile_allowance
        if record and variant == 'compiled' and estimate > left(args):
            out['skipped'].append(f"compiled {name}: about {estimate:.0f} s needed, {left(args):.0f} s left of the budget")
            print(f"skipped compiled {name} (time)", flush=True)
            return None
        start = time.perf_counter()
        try:
            value = fn()
        except (OutOfTime, KeyboardInterrupt):
            raise
        except Exception as e:   # one broken section (an inductor error, out of memory) keeps the others
            out['errors'].append(f"{variant} {name}: {type(e).__name__}: {str(e)[:300]}")
            print(f"{variant:<9} {name:<7} failed: {out['errors'][-1]}", flush=True)
            write()
            return None
        if not record:
            return value
        if variant == 'eager':
            spent[name] = time.perf_counter() - start
        else:   # graphs compiled so far for this model (since its learner was built)
            value['dynamo_graphs'] = torch._dynamo.utils.counters['stats']['unique_graphs']
        out['results'][variant][name] = value
        write()
        print(f"{variant:<9} {name:<7} {time.perf_counter() - start:7.1f} s  {json.dumps(value, default=str)[:160]}",
              flush=True)
        return value

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(left(args))))
    try:
        for variant in variants:
            compiled = variant == 'compiled'
            learn = None
            for name in ('epoch', 'apgd', 'eval'):
                if learn is None:   # built once per variant: the sections share its compiled graphs
                    if compiled and args.compile_allowance > left(args):
                        out['skipped'].append(f"compiled {name} and after: {left(args):.0f} s left of the budget")
                        break
                    learn = section(variant, 'learner', lambda: make_learner(args, data, args.arch, args.arch_kwargs,
                                                                             args.train_n, compiled), record=False)
                    if learn is None:
                        break
                fn = {'epoch': lambda: epochs(learn, data, args), 'apgd': lambda: apgd_cost(learn, data, args),
                      'eval': lambda: evaluation(learn, args)}[name]
                section(variant, name, fn)
            del learn
            _free(args)
            section(variant, 'memory', lambda: peak_memory(args, data, compiled))
            _free(args)
        out['complete'] = not out['skipped'] and not out['errors']
    except OutOfTime:
        out['skipped'].append(f"stopped by the {args.budget:.0f} s budget; sections not listed in results did not finish")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    for name in ('epoch', 'apgd', 'eval', 'memory'):
        e, c = out['results']['eager'].get(name), out['results']['compiled'].get(name)
        if e and c:
            out['results'].setdefault('compiled_speedup', {})[name] = _speedup(name, e, c)
    write()
    print(f"wrote {path} ({out['elapsed_s']:.0f} s){'; skipped: ' + '; '.join(out['skipped']) if out['skipped'] else ''}")
    return out


def _speedup(name, eager, compiled):
    """Eager over compiled: above 1 where compilation helps (memory: eager peak over compiled peak)."""
    if name == 'epoch':
        return {s: eager['seconds'][s] / compiled['seconds'][s] for s in eager['seconds']}
    if name == 'apgd':
        return {n: eager[n]['seconds'] / compiled[n]['seconds'] for n in EPS}
    if name == 'eval':
        return compiled['points_per_s'] / eager['points_per_s']
    return eager['bytes'] / compiled['bytes']


if __name__ == '__main__':
    main()
