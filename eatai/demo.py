"""The demo: E-AT fine-tuning of the bundled l-inf-robust checkpoint on the bundled CIFAR-10 sample."""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastai.torch_core import set_seed

from .data import arrays_dls, load_sample
from .evaluation import RobustResult
from .learner import robust_learner

__all__ = ['DEMO_CHECKPOINT', 'DemoConfig', 'DemoResult', 'run_demo']

DEMO_CHECKPOINT = Path(str(resources.files('eatai') / 'checkpoints' / 'cifar_cnn_linf.pt'))


@dataclass
class DemoConfig:
    """What the demo runs; the defaults finish in a few minutes on 2 CPU cores."""
    epochs: int = 3
    lr: float = 0.05
    bs: int = 64
    n_eval: int = 300
    n_train: int | None = None   # fine-tune on the first n training images of the sample (None: all 2000)
    budget: str = 'quick'
    seed: int = 0
    checkpoint: str = str(DEMO_CHECKPOINT)


@dataclass
class DemoResult:
    before: RobustResult
    after: RobustResult
    seconds: dict

    def rows(self):
        return [('l-inf AT (bundled)', self.before), ('+ E-AT fine-tuning', self.after)]


def run_demo(config: DemoConfig | None = None, progress: bool = True) -> DemoResult:
    """Evaluate the checkpoint, fine-tune it with `eat_finetune`, evaluate again."""
    config = config or DemoConfig()
    set_seed(config.seed)
    x_train, y_train, x_valid, y_valid = load_sample()
    n = config.n_train or len(y_train)
    learn = robust_learner(arrays_dls(x_train[:n], y_train[:n], x_valid, y_valid, bs=config.bs), config.checkpoint)
    evaluate = dict(n=config.n_eval, budget=config.budget, seed=config.seed, progress=progress)
    seconds = {}
    with ExitStack() as quiet:
        if not progress:   # fastai's own progress bars and epoch table
            quiet.enter_context(learn.no_bar()), quiet.enter_context(learn.no_logging())
        t0 = time.perf_counter()
        before = learn.robust_eval(name='l-inf AT (bundled)', **evaluate)
        seconds['eval_before'], t0 = time.perf_counter() - t0, time.perf_counter()
        learn.eat_finetune(epochs=config.epochs, lr=config.lr)
        seconds['finetune'], t0 = time.perf_counter() - t0, time.perf_counter()
        after = learn.robust_eval(name='+ E-AT fine-tuning', **evaluate)
        seconds['eval_after'] = time.perf_counter() - t0
    return DemoResult(before, after, seconds)
