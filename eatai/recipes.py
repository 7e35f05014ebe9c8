"""What the scripts in recipes/ share: their arguments, data, model, and the before/after run.

Each recipe is a short argument parser and one call to `run_recipe`, which evaluates the
model, trains it as the recipe says, evaluates again, saves the checkpoint and the results
JSON, and prints the paper-style table. Every recipe takes `--smoke` (the whole script on the bundled
sample in under a minute; tests run every recipe that way), `--out-dir` and `--seed` (`common_args`),
and its numbers are checked when the arguments are parsed (`eatai._args`).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

from fastai.callback.core import Callback
from fastai.torch_core import set_seed

from .callbacks import distributed  # noqa: F401  registers Learner.robust_distrib_ctx
from ._utils.args import (ArgumentParser, existing_dir, existing_file, non_negative_int, positive_float, positive_int,
                    random_seed, training_scheme)
from ._utils.dist import is_main_process
from ._utils.io import atomic_torch_save, atomic_write_text
from .evaluation.budget import BUDGETS
from . import __version__
from .callbacks import Checkpointing
from .evaluation.result import RESULTS_FORMAT
from .data import arrays_dls, cifar10_dls, load_sample
from .learner import robust_learner
from .callbacks.tracking import TRACKERS, log_robust_result, tracking
from .evaluation import print_results
from .threats import DEFAULT_EPS

__all__ = ['common_args', 'base_parser', 'recipe_parser', 'recipe_dls', 'recipe_model', 'run_recipe', 'SMOKE',
           # argparse types for the recipes' own flags (from eatai._args)
           'positive_int', 'positive_float', 'non_negative_int', 'existing_dir', 'existing_file', 'training_scheme']


@dataclass(frozen=True)
class _Smoke:
    """The settings of a --smoke run: bundled data and checkpoint, tiny budget."""
    n_train: int = 128
    n_eval: int = 24
    epochs: int = 1
    bs: int = 32
    n_iter: int = 2


SMOKE = _Smoke()


def common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags every script in recipes/ takes, with one meaning: --smoke, --out-dir, --seed."""
    parser.add_argument('--smoke', action='store_true',
                        help='run end to end on the bundled sample (and checkpoint) with a tiny budget, in under a minute')
    parser.add_argument('--out-dir', default='runs', help='folder for the checkpoint(s) and the results JSON (created)')
    parser.add_argument('--seed', type=random_seed, default=0, help='random seed of data order, initialisation and attacks')
    return parser


def base_parser(description: str) -> argparse.ArgumentParser:
    """A recipe's parser with only the common flags; its errors are one line, exit status 2."""
    return common_args(ArgumentParser(description=description))


def recipe_parser(description: str, epochs: int = 3, lr: float = 0.05, bs: int = 128,
                  dataset: str = 'cifar10') -> argparse.ArgumentParser:
    """The arguments every before/after recipe takes; recipes add their own."""
    p = base_parser(description)
    p.add_argument('--model', help='RobustBench id, checkpoint path (.pt/.pth) or architecture name '
                                   '(default with --smoke: the bundled l-inf CNN)')
    p.add_argument('--weights', type=existing_file, help='weights for an architecture name given as --model')
    p.add_argument('--mean', type=float, nargs=3, help="the checkpoint's input normalisation (default: the "
                   "architecture's, CIFAR-10's for eatai's; many checkpoints use none: --mean 0 0 0 --std 1 1 1)")
    p.add_argument('--std', type=positive_float, nargs=3)
    p.add_argument('--data', type=existing_dir, help='dataset folder (CIFAR-10: npz files or train/test image folders; '
                                                     'default: download with fastai, or the bundled sample with --smoke)')
    p.add_argument('--extra', type=existing_file,
                   help="Carmon et al.'s extra data (pickle or npz): batches become half standard, half extra")
    p.add_argument('--epochs', type=positive_int, default=epochs)
    p.add_argument('--lr', type=positive_float, default=lr)
    p.add_argument('--bs', type=positive_int, default=bs)
    p.add_argument('--n-iter', type=positive_int, default=10, help='APGD steps of the training attacks')
    p.add_argument('--n-eval', type=positive_int, default=1000, help='test points for the robust evaluation')
    p.add_argument('--budget', default='standard', choices=BUDGETS,
                   help="'standard': APGD-CE + APGD-T (the paper's); 'autoattack': full AutoAttack; 'quick': opt-in")
    p.add_argument('--dataset', default=dataset, choices=list(DEFAULT_EPS), help="whose radii")
    p.add_argument('--checkpoint-every', type=non_negative_int, default=0, metavar='N',
                   help='save a resume checkpoint every N batches under --out-dir; run again to resume (0: never)')
    p.add_argument('--log', nargs='+', action='extend', choices=TRACKERS, default=[], metavar='{tensorboard,wandb,csv}',
                   help="trackers of each run's epochs and final evaluation, under --out-dir: TensorBoard events in "
                        "tensorboard/, a W&B run (WANDB_MODE=offline keeps it local), CSV tables (eatai.callbacks.tracking)")
    return p


def _smoke(args) -> None:
    """Shrink a run to the smoke budget, in place."""
    args.epochs = min(args.epochs, SMOKE.epochs)
    args.bs, args.n_iter, args.n_eval, args.budget = SMOKE.bs, SMOKE.n_iter, SMOKE.n_eval, 'quick'


def recipe_dls(args):
    """The bundled sample (--smoke) or CIFAR-10 from --data (or a download)."""
    if args.smoke and args.data is None:
        x_train, y_train, x_valid, y_valid = load_sample()
        return arrays_dls(x_train[:SMOKE.n_train], y_train[:SMOKE.n_train], x_valid, y_valid, bs=args.bs)
    return cifar10_dls(bs=args.bs, path=args.data, extra=getattr(args, 'extra', None))


def _check_model_given(args, scratch_arch) -> None:
    if args.model is None and scratch_arch is None and not args.smoke:
        raise ValueError("--model is required (a RobustBench id, a checkpoint path or an architecture name)")


def recipe_model(args, n_classes: int = 10, scratch_arch: str | None = None):
    """What --model names: a RobustBench id, a checkpoint or an architecture (with --weights).
    Without --model: the bundled checkpoint for fine-tuning smoke runs, `scratch_arch` built
    fresh for recipes that train from scratch."""
    from .models import build_model, load_model
    _check_model_given(args, scratch_arch)
    if args.model is None:
        if scratch_arch is not None:
            return build_model(scratch_arch, n_classes)
        from .demo import DEMO_CHECKPOINT
        return load_model(DEMO_CHECKPOINT)
    from .models.zoo import is_zoo_id
    if is_zoo_id(args.model):   # eatai's zoo: no robustbench; the dataset picks among ids RobustBench reuses
        return load_model(args.model, weights=args.weights, mean=args.mean, std=args.std, dataset=args.dataset)
    return load_model(args.model, weights=args.weights, num_classes=n_classes, mean=args.mean, std=args.std)


def _slug(text: str) -> str:
    return ''.join(c if c.isalnum() else '_' for c in text).strip('_').lower() or 'run'


def _save_adversarial(learn, args, path) -> None:
    """The last trained model's adversarial pictures (`show_adversarial`), beside the results JSON."""
    import matplotlib.pyplot as plt
    fig = learn.show_adversarial(n=8, n_iter=SMOKE.n_iter if args.smoke else 20, seed=args.seed)
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _EpochCount(Callback):
    """Epochs whose training phase ran, over every fit of a run: the results JSON's cost per epoch."""
    def __init__(self):
        self.count = 0

    def after_train(self):
        self.count += 1


def _device(learn) -> str:
    """Where the run trained, for readers of its cost: the GPU's name, or 'cpu'."""
    import torch
    device = next(learn.model.parameters()).device
    return torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type


def _training(learn, seconds: float, epochs: int) -> dict:
    """What `eatai compare` shows of a run's cost: scheme, epochs, total and per-epoch seconds, device."""
    at = getattr(learn, 'adversarial_training', None)
    scheme = None if at is None else at.strategy.name + ('' if at.loss is None else f'+{type(at.loss).__name__}')
    return {'scheme': scheme, 'epochs': epochs, 'seconds': seconds,
            'seconds_per_epoch': seconds / epochs if epochs else None, 'device': _device(learn)}


def run_recipe(args, slug: str, title: str, runs, evaluate_original: bool = True, scratch_arch: str | None = None,
               dls=None) -> dict:
    """For each (name, train) in `runs`: start from the same weights, `train(learn, args)`,
    evaluate; save each model and one results JSON under --out-dir; print the table. The JSON holds
    the arguments, each run's result and its training cost (`training`: scheme, epochs, seconds,
    seconds per epoch, device), read by `eatai compare`."""
    if args.smoke:
        _smoke(args)
    set_seed(args.seed)
    _check_model_given(args, scratch_arch)   # before loading any data
    dls = dls if dls is not None else recipe_dls(args)
    learn = robust_learner(dls, recipe_model(args, dls.c, scratch_arch), dataset=args.dataset)
    start_state = copy.deepcopy(learn.model.state_dict())
    evaluate = dict(n=args.n_eval, budget=args.budget, seed=args.seed, progress=not args.smoke)
    rows, seconds, training, out = [], {}, {}, Path(args.out_dir)
    if evaluate_original:
        rows.append(('original', learn.robust_eval(name='original', **evaluate)))
    for name, train in runs:
        learn.model.load_state_dict(start_state)
        learn.opt = None          # every run starts with a fresh optimiser
        set_seed(args.seed)
        start = time.perf_counter()
        resume = [Checkpointing(out / f'{slug}_{_slug(name)}.resume.pth', args.checkpoint_every, resume=True)
                  ] if args.checkpoint_every else []
        epochs = _EpochCount()
        with tracking(learn, getattr(args, 'log', None), out, f'{slug}_{_slug(name)}', config=vars(args)):   # --log
            with learn.robust_distrib_ctx(), learn.added_cbs([*resume, epochs]):   # DDP under torchrun / accelerate launch
                train(learn, args)
            seconds[name] = time.perf_counter() - start
            training[name] = _training(learn, seconds[name], epochs.count)
            rows.append((name, learn.robust_eval(name=name, **evaluate)))
            log_robust_result(learn, rows[-1][1])
            if evaluate_original:   # the starting point beside it, for before/after charts
                log_robust_result(learn, rows[0][1], prefix='original')
        history = getattr(getattr(learn, 'adversarial_training', None), 'history', [])
        if not is_main_process():
            continue
        atomic_torch_save({'state_dict': learn.model.state_dict(), 'recipe': slug, 'run': name, 'args': vars(args),
                           'history': history}, out / f'{slug}_{_slug(name)}.pt')
    results = {'recipe': slug, 'args': vars(args), 'train_seconds': seconds, 'training': training,
               'results': {name: r.to_dict() for name, r in rows},
               'results_format': RESULTS_FORMAT, 'eatai_version': __version__}
    if not is_main_process():   # in a DDP run only rank 0 writes and prints
        return results
    path = atomic_write_text(json.dumps(results, indent=1), out / f'{slug}.json')
    _save_adversarial(learn, args, out / f'{slug}_adversarial.png')
    print_results(rows, title=title)
    print(f"training seconds: {', '.join(f'{k} {v:.0f}' for k, v in seconds.items())}; results in {path}")
    return results
