"""Two-process (DDP, gloo on CPU / nccl on GPUs) against one-process seconds per epoch of E-AT
fine-tuning on the same data. On a 2-core machine expect little gain: the point is correctness.

    python bench/distributed.py [--n-train 1024] [--epochs 1]
Runs itself under `torch.distributed.run` for the two-process figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from fastai.torch_core import set_seed

import eatai.callbacks.distributed  # noqa: F401  Learner.robust_distrib_ctx
from eatai.all import arrays_dls, build_model, robust_learner
from eatai.data import load_sample


def one_run(args) -> float:
    torch.set_num_threads(args.threads)
    set_seed(0)
    x_train, y_train, x_valid, y_valid = load_sample()
    reps = -(-args.n_train // len(y_train))
    x_train, y_train = x_train.repeat(reps, 1, 1, 1)[:args.n_train], y_train.repeat(reps)[:args.n_train]
    dls = arrays_dls(x_train, y_train, x_valid[:128], y_valid[:128], bs=args.bs)
    learn = robust_learner(dls, build_model('cifar_cnn', 10))
    with learn.no_bar(), learn.no_logging(), learn.robust_distrib_ctx():
        start = time.perf_counter()
        learn.eat_finetune(args.epochs, 0.01)
        return (time.perf_counter() - start) / args.epochs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n-train', type=int, default=1024)
    parser.add_argument('--bs', type=int, default=128)
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--threads', type=int, default=1, help='torch threads per process')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--out', default='distributed.json')
    args = parser.parse_args()
    if args.worker:   # one process of the two-process run
        seconds = one_run(args)
        if int(os.environ.get('RANK', 0)) == 0:
            Path(args.out).write_text(json.dumps({'seconds_per_epoch': seconds}))
        return
    single = one_run(args)
    tmp = Path(args.out).with_suffix('.ddp.json')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', __file__, '--worker',
           '--n-train', str(args.n_train), '--bs', str(args.bs), '--epochs', str(args.epochs),
           '--threads', str(args.threads), '--out', str(tmp)]
    subprocess.run(cmd, check=True, env={**os.environ, 'OMP_NUM_THREADS': str(args.threads)})
    double = json.loads(tmp.read_text())['seconds_per_epoch']
    print(f"E-AT fine-tuning, cifar_cnn, {args.n_train} images, batch {args.bs} per process, {args.threads} thread(s) per process")
    print(f"{'processes':<10}{'s/epoch':>10}{'speed-up':>10}")
    print(f"{1:<10}{single:>10.1f}{1:>10.2f}")
    print(f"{2:<10}{double:>10.1f}{single / double:>10.2f}")
    Path(args.out).write_text(json.dumps({'args': vars(args), 'one_process': single, 'two_processes': double}, indent=1))
    print(f'written to {args.out}')


if __name__ == '__main__':
    main()
