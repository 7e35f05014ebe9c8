"""One-line recipes: `fit_adversarial`, `eat_finetune`, `transfer_finetune`, `finetune_adversarial`
(paper Sec. 4.3, 5.3, App. A)."""
from __future__ import annotations

import math

from fastai.callback.schedule import ParamScheduler
from fastai.learner import Learner
from fastcore.basics import patch
from fastcore.foundation import L

from .callbacks import AdversarialTraining, AttackSettings, DecayAll, SingleNorm, Strategy, TrainingLoss, make_strategy
from .threats import canonical_norm

__all__ = ['finetune_schedule', 'piecewise_schedule', 'set_adversary']

_ROUNDING = 1e-9  # pct_train is a float sum; an epoch boundary must not fall a hair short


def finetune_schedule(lr: float):
    """The fine-tuning schedule (App. A): lr, then lr / 10 and lr / 100 from each third of the run.

    For the paper's 3 CIFAR-10 epochs that is lr / 10 at the start of each epoch, for its single
    ImageNet epoch lr / 10 at each third of it. Longer runs (Tables 8, 9: 5 to 15 epochs) keep the
    thirds, as the authors' code ('piecewise-ft') does: dividing at every epoch would leave
    15 epochs with lr / 10^14 at the end.
    """
    def schedule(pct: float) -> float:
        return lr * 0.1 ** min(math.floor(pct * 3 + _ROUNDING), 2)
    return schedule


def piecewise_schedule(lr: float, decay_at: float = 70 / 80):
    """lr until `decay_at` of training, then lr / 10 (paper: 80 epochs, /10 after 70)."""
    if not 0 < decay_at <= 1:
        raise ValueError(f"decay_at must be in (0, 1], got {decay_at!r}")

    def schedule(pct: float) -> float:
        return lr if pct + _ROUNDING < decay_at else lr / 10
    return schedule


def set_adversary(learn: Learner, scheme, eps=None, n_iter=10, method=None, loss: TrainingLoss | None = None,
                  finetune: bool = False, **apgd_options) -> AdversarialTraining:
    """Attach (or re-arm) the learner's adversarial-training callback with a fresh strategy.

    The callback stays on the learner afterwards, so `learn.save` keeps its statistics and
    later `fit` calls keep training adversarially; `learn.remove_cb(AdversarialTraining)` undoes it.
    method: None (each scheme's own attack: APGD for E-AT and single norms, PGD/SLIDE for the
    baselines), or 'apgd' / 'pgd' for all. loss: a training loss on top of the scheme, e.g.
    `TRADES(beta=6.0)`. finetune: the scheme's fine-tuning defaults (RAMP's lam) rather than
    its from-scratch ones.
    """
    strategy: Strategy = make_strategy(scheme)
    strategy.set_mode(finetune)
    settings = AttackSettings.build(getattr(learn, 'threat_dataset', 'cifar10'), eps, n_iter, method, **apgd_options)
    old = [cb for cb in learn.cbs if isinstance(cb, AdversarialTraining)]
    precision = old[0].attack_precision if old else 'auto'   # a user's choice outlives the re-arming
    cb = AdversarialTraining(strategy, settings, attack_precision=precision, loss=loss)   # raises before any change
    for old_cb in old:
        learn.remove_cb(old_cb)
    learn.add_cb(cb)
    return cb


def _check_epochs(n_epoch) -> None:
    if isinstance(n_epoch, bool) or not isinstance(n_epoch, int) or n_epoch < 1:
        raise ValueError(f"the number of epochs must be an integer >= 1, got {n_epoch!r}")


def _check_lr(lr) -> None:
    if not isinstance(lr, (int, float)) or not lr > 0 or math.isinf(lr):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")


@patch
def fit_adversarial(self: Learner, n_epoch: int, lr: float = 0.05, scheme='eat', eps=None, n_iter=10,
                    decay_at: float = 70 / 80, method=None, cbs=None, loss=None, **kwargs):
    """Adversarial training from scratch with `scheme` ('eat', 'linf', 'l2', 'l1', 'max', 'avg',
    'msd', 'sat', 'ramp', a switch like 'l2>eat@45', or a `Strategy` such as `RAMP(lam=5)`): the
    paper's piecewise schedule, lr / 10 after `decay_at` of the epochs. loss: e.g. `TRADES(beta=6.0)`.
    BatchNorm and bias parameters keep fastai's weight-decay exemption."""
    _check_epochs(n_epoch), _check_lr(lr)
    set_adversary(self, scheme, eps, n_iter, method, loss=loss)
    self.fit(n_epoch, lr, cbs=L(ParamScheduler({'lr': piecewise_schedule(lr, decay_at)})) + L(cbs), **kwargs)


@patch
def finetune_adversarial(self: Learner, scheme='eat', epochs: int = 3, lr: float = 0.05, eps=None, n_iter=10,
                         method=None, cbs=None, loss=None, **kwargs):
    """Adversarial fine-tuning with any scheme and the paper's fine-tuning schedule: lr / 10 at
    each third of the run (each epoch of 3, each third of a single epoch). Weight decay applies
    to every parameter, BatchNorm and biases included, as in the authors' fine-tuning (`DecayAll`).
    loss: e.g. `TRADES(beta=6.0)`."""
    _check_epochs(epochs), _check_lr(lr)
    set_adversary(self, scheme, eps, n_iter, method, loss=loss, finetune=True)
    self.fit(epochs, lr, cbs=L(ParamScheduler({'lr': finetune_schedule(lr)}), DecayAll()) + L(cbs), **kwargs)


@patch
def eat_finetune(self: Learner, epochs: int = 3, lr: float = 0.05, eps=None, n_iter=10, cbs=None, **kwargs):
    """E-AT fine-tuning (paper Sec. 4.3): l1 + l-inf APGD training for `epochs` epochs, lr / 10
    at each third of the run (each epoch of 3, each third of a single epoch).
    n_iter: steps for every norm or per norm, e.g. {'linf': 5, 'l1': 15} as for ImageNet."""
    self.finetune_adversarial('eat', epochs, lr, eps, n_iter, cbs=cbs, **kwargs)


@patch
def transfer_finetune(self: Learner, norm: str, epochs: int = 3, lr: float = 0.05, eps=None, n_iter=10, cbs=None,
                      **kwargs):
    """l_p -> l_q fine-tuning (paper Sec. 5.3): single-norm APGD training in `norm` with the
    fine-tuning schedule of `eat_finetune`."""
    self.finetune_adversarial(SingleNorm(canonical_norm(norm)), epochs, lr, eps, n_iter, cbs=cbs, **kwargs)
