"""The adversarial-training callback: training batches become adversarial, validation stays clean."""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
from fastai.callback.core import Callback, CancelBatchException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.learner import Metric
from fastcore.foundation import L
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._utils.dist import all_reduce_sum
from ..attacks import APGDConfig, apgd
from ..attacks.msd import msd
from ..attacks.pgd import pgd
from ..geometry import hull_covers, hull_radius
from ..threats import NORMS, canonical_norm, default_eps, parse_threat
from .losses import TrainingLoss, make_training_loss
from .registry import make_strategy
from .strategies import Strategy

__all__ = ['AttackSettings', 'AdversarialTraining', 'EpochStat']


_METHODS = ('apgd', 'pgd')


@dataclass
class AttackSettings:
    """The training attacks: radius and steps per norm (paper, App. A) and the attack method.

    method: 'apgd' or 'pgd' (fixed steps; SLIDE for l1) for every strategy, or None for each
    strategy's own choice (APGD for E-AT and single norms, PGD for the baselines, as in the paper).
    """
    eps: dict = field(default_factory=lambda: {n: default_eps(n, 'cifar10') for n in NORMS})
    n_iter: dict = field(default_factory=lambda: {n: 10 for n in NORMS})
    method: str | None = None
    apgd_options: dict = field(default_factory=dict)
    grad_scale: float = 1.0   # set by the callback: fp16 attacks scale the loss like a GradScaler
    attack_loss: str = 'ce'   # set from the training loss: 'kl' for TRADES

    @classmethod
    def build(cls, dataset: str = 'cifar10', eps=None, n_iter=10, method=None, **apgd_options) -> 'AttackSettings':
        """eps: None (the dataset's radii), {norm: eps} or threat strings like ['l1:12'];
        n_iter: one number for every norm or {norm: steps} (e.g. {'linf': 5, 'l1': 15})."""
        radii = {n: default_eps(n, dataset) for n in NORMS}
        if isinstance(eps, dict):
            radii.update({canonical_norm(n): parse_threat(f'{n}:{e}').eps for n, e in eps.items()})
        elif eps is not None:
            for threat in ([eps] if isinstance(eps, str) else eps):
                tm = parse_threat(threat, dataset)
                radii[tm.norm] = tm.eps
        steps = {n: 10 for n in NORMS}
        if isinstance(n_iter, dict):
            steps.update({canonical_norm(n): v for n, v in n_iter.items()})
        else:
            steps = {n: n_iter for n in NORMS}
        for v in steps.values():
            APGDConfig.from_options(n_iter=v, **apgd_options)   # fail now, not mid-epoch
        if method not in (None, *_METHODS):
            raise ValueError(f"method must be one of {_METHODS} or None, got {method!r}")
        return cls(radii, steps, method, dict(apgd_options))

    def run(self, model, x, y, norm: str, default_method: str = 'apgd', return_loss: bool = False):
        """The training attack in `norm`: (x_adv, correct at every iterate[, loss at x_adv]).

        With attack_loss 'kl' (TRADES) the attack starts at a random point of the ball: the KL to the
        clean prediction has zero gradient at x (TRADES itself starts at x plus tiny Gaussian noise)."""
        kl = self.attack_loss == 'kl'
        if (self.method or default_method) == 'pgd':
            return pgd(model, x, y, norm, self.eps[norm], self.n_iter[norm], return_loss=return_loss,
                       grad_scale=self.grad_scale, loss=self.attack_loss, random_start=kl)
        trades = {'loss': 'kl', 'random_start': True} if kl else {}
        return apgd(model, x, y, norm, self.eps[norm], self.n_iter[norm], return_loss=return_loss,
                    **{'grad_scale': self.grad_scale, **self.apgd_options, **trades})

    def msd(self, model, x, y, norms):
        """MSD over `norms` with these radii: (x_adv, correct, chosen steps per norm)."""
        if self.attack_loss != 'ce':
            raise ValueError(f"MSD's attack maximises the cross-entropy only, not {self.attack_loss!r}")
        n_iter = max(self.n_iter[n] for n in norms)
        return msd(model, x, y, {n: self.eps[n] for n in norms}, n_iter, grad_scale=self.grad_scale)


class EpochStat(Metric):
    """A column in fastai's progress table and recorder: a training statistic of the epoch."""

    def __init__(self, cb: 'AdversarialTraining', key: str):
        self.cb, self.key = cb, key

    def reset(self):
        pass

    def accumulate(self, learn):
        pass

    @property
    def value(self):
        return self.cb.epoch_stats.get(self.key, math.nan)

    @property
    def name(self):
        return self.key


class AdversarialTraining(Callback):
    """Swap each training batch for its adversarial version, chosen by a strategy.

    Per epoch it reports, for each norm the strategy attacks in, the share of batches in that
    norm (`freq_<norm>`), the robust training error of those attacks (`rerr_<norm>`) and the
    training loss on them (`loss_<norm>`), as fastai metric columns; `history` keeps them.
    loss: a `TrainingLoss` such as `TRADES(beta=6.0)` on top of the strategy, or None (fastai's loss_func).
    """
    # Before MixedPrecision (order 10) opens its autocast for the training forward: the attack
    # chooses its own precision. attack_precision='auto' attacks under autocast in the learner's
    # MixedPrecision dtype (fp16 with a loss scale for the input gradient, or bf16) on the
    # model's device, so attack passes cost what training passes cost; 'fp32' always attacks in
    # full precision. The l1 projection and the step sizes are fp32 either way (inputs are fp32).
    order, run_valid = MixedPrecision.order - 1, False

    def __init__(self, strategy='eat', settings: AttackSettings | None = None, show_stats: bool = True,
                 attack_precision: str = 'auto', loss: TrainingLoss | None = None):
        if attack_precision not in ('auto', 'fp32'):
            raise ValueError(f"attack_precision must be 'auto' or 'fp32', got {attack_precision!r}")
        self.strategy: Strategy = make_strategy(strategy)
        if loss is not None and not isinstance(loss, TrainingLoss):
            raise TypeError(f"loss must be a TrainingLoss such as TRADES(beta=6.0) or None, got {type(loss).__name__}")
        if loss is not None and not self.strategy.accepts_loss:
            raise ValueError(f"scheme {self.strategy.name!r} cannot take the training loss {type(loss).__name__}: "
                             "it has an attack or loss of its own; use it with 'eat', 'linf', 'l2', 'l1', 'max', "
                             "'avg', 'sat' or a switch of those")
        self.loss = loss
        self.settings = settings or AttackSettings.build()
        self.settings.attack_loss = 'ce' if loss is None else loss.attack_loss
        self.show_stats, self.attack_precision = show_stats, attack_precision
        self.history: list[dict] = []
        self.epoch_stats: dict = {}

    @property
    def stat_names(self) -> list:
        s = self.strategy
        rerr = [f'rerr_{k}' for k in s.robust_keys]
        if not s.one_norm_per_batch:
            return rerr + list(s.stat_names)
        freq = [f'freq_{n}' for n in s.norms] if len(s.norms) > 1 else []
        return freq + rerr + [f'loss_{n}' for n in s.norms] + list(s.stat_names)

    def _autocast_dtype(self):
        mp = next((cb for cb in self.learn.cbs if isinstance(cb, MixedPrecision)), None)
        if mp is None or self.attack_precision == 'fp32':
            return None
        return torch.bfloat16 if mp.amp_mode == AMPMode.BF16 else torch.float16

    def before_fit(self):
        self._dtype, self._radii_checked = self._autocast_dtype(), False
        self._has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.settings.grad_scale = 1024.0 if self._dtype is torch.float16 else 1.0
        kept = L(m for m in self.learn.metrics if not isinstance(m, EpochStat))  # stale columns of a crashed fit
        self.learn.metrics = kept + (L(EpochStat(self, k) for k in self.stat_names) if self.show_stats else L())

    def after_fit(self):
        self.learn.metrics = L(m for m in self.learn.metrics if not isinstance(m, EpochStat))

    def before_train(self):
        self.strategy.set_epoch(self.epoch)
        self._counts = defaultdict(lambda: {'batches': 0, 'examples': 0, 'errors': 0.0, 'loss': 0.0, 'loss_n': 0})
        self._n_batches = 0

    def _skip_unusable(self, x) -> None:
        """Skip batches that cannot be trained on (empty; one example through BatchNorm)."""
        if len(x) == 0 or (len(x) == 1 and self._has_bn):
            warnings.warn(f"skipped a training batch of {len(x)} example(s): BatchNorm cannot train on fewer than "
                          "two; use drop_last=True or a batch size that divides the data", stacklevel=2)
            raise CancelBatchException()

    def _check_radii(self, x) -> None:
        """Warn once if the l1 and l-inf balls nest (Sec. 3: E-AT needs eps_inf < eps1 < d eps_inf)."""
        if self._radii_checked or not {'linf', 'l1'} <= set(self.strategy.norms):
            return
        self._radii_checked = True
        self._check_hull(x)
        d, e1, einf = x[0].numel(), self.settings.eps['l1'], self.settings.eps['linf']
        if not einf < e1 < d * einf:
            inside = 'the l1 ball lies inside the l-inf ball' if e1 <= einf else 'the l-inf ball lies inside the l1 ball'
            warnings.warn(f"eps1={e1:g}, eps_inf={einf:.4g}, d={d}: {inside}, so training on both reduces to "
                          "single-norm training (Sec. 3 needs eps_inf < eps1 < d*eps_inf)", stacklevel=2)

    def _check_hull(self, x) -> None:
        """Warn if l1 + l-inf training does not cover the l2 radius (Sec. 4.2's rule, Thm. 3.1)."""
        d, e1, einf, e2 = x[0].numel(), self.settings.eps['l1'], self.settings.eps['linf'], self.settings.eps['l2']
        if 'l2' in self.strategy.norms or not einf < e1 < d * einf or hull_covers(e2, e1, einf, d):
            return
        warnings.warn(f"the convex hull of the l1 ball (eps1={e1:g}) and the l-inf ball (eps_inf={einf:.4g}) in "
                      f"d={d} dimensions holds l2 radius {hull_radius(e1, einf, d):.4g} only, less than the l2 radius "
                      f"{e2:g}: training on l1 and l-inf is not expected to give l2 robustness there (Sec. 4.2); "
                      "raise eps1 or train l2 as well", stacklevel=3)

    def before_batch(self):
        if len(self.xb) != 1 or len(self.yb) != 1:
            raise ValueError(f"adversarial training expects one input and one target per batch, got {len(self.xb)} and {len(self.yb)}")
        x, y = self.xb[0], self.yb[0]
        self._skip_unusable(x)
        self._check_radii(x)
        precision = nullcontext() if self._dtype is None else torch.autocast(x.device.type, dtype=self._dtype)
        # attack the bare module: DDP's gradient hooks are for the training backward only
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        with precision:
            batch = self.strategy.perturb(self.settings, model, x, y)
            if self.loss is not None:
                batch = self.loss.prepare(batch, x, y)
        self.learn.xb, self.learn.yb = (batch.x,), (batch.y,)
        self._batch = batch
        self._n_batches += 1
        for norm, correct in batch.robust.items():
            c = self._counts[norm]
            c['batches'] += 1
            c['examples'] += correct.numel()
            c['errors'] += (~correct).sum()  # a tensor: no device sync per batch

    def after_loss(self):
        if self._batch.loss_fn is not None:   # a loss over several outputs of the forward (RAMP, TRADES)
            self.learn.loss_grad = self._batch.loss_fn(self.pred)
            self.learn.loss = self.learn.loss_grad.clone()
        if not bool(torch.isfinite(self.learn.loss)):   # stop before the step spoils the weights
            raise FloatingPointError(f"the training loss became {self.learn.loss.item()} at epoch {self.epoch}, "
                                     f"batch {self.iter}: training stopped before the update, so the weights and "
                                     "the last checkpoint are the last good ones; lower the learning rate")
        norm = self._batch.norm
        if norm is not None:
            n = self._batch.y.shape[0]
            self._counts[norm]['loss'] += self.learn.loss.detach() * n
            self._counts[norm]['loss_n'] += n

    def _global_counts(self) -> tuple[dict, float]:
        """This epoch's counts, summed over all processes of a DDP run."""
        keys = list(dict.fromkeys([*self.strategy.robust_keys, *self.strategy.norms]))
        fields = ('batches', 'examples', 'errors', 'loss', 'loss_n')
        local = torch.tensor([[float(self._counts[k][f]) for f in fields] for k in keys] + [[self._n_batches, 0, 0, 0, 0]])
        total = all_reduce_sum(local)
        counts = {k: dict(zip(fields, row.tolist())) for k, row in zip(keys, total)}
        return counts, total[-1, 0].item()

    def after_train(self):
        counts, n_batches = self._global_counts()
        stats = {}
        for key in self.strategy.robust_keys:
            c = counts[key]
            stats[f'rerr_{key}'] = c['errors'] / c['examples'] if c['examples'] else math.nan
        if self.strategy.one_norm_per_batch:
            for norm in self.strategy.norms:
                c = counts[norm]
                stats[f'freq_{norm}'] = c['batches'] / max(n_batches, 1)
                stats[f'loss_{norm}'] = c['loss'] / c['loss_n'] if c['loss_n'] else math.nan
        stats.update(self.strategy.stats())
        self.epoch_stats = stats
        self.history.append({'epoch': self.epoch, **stats})

    def epoch_counts(self) -> dict:
        """The running counts of the current epoch (for exact resumption mid-epoch)."""
        return {'counts': {k: dict(v) for k, v in self._counts.items()}, 'n_batches': self._n_batches}

    def set_epoch_counts(self, state: dict) -> None:
        self._counts.clear()
        self._counts.update({k: dict(v) for k, v in state['counts'].items()})
        self._n_batches = state['n_batches']

    def state_dict(self) -> dict:
        """What a saved learner keeps of the adversarial training (see `RobustLearner.save`)."""
        return {'strategy': self.strategy.name, 'strategy_state': self.strategy.state_dict(),
                'settings': asdict(self.settings), 'history': list(self.history),
                'loss': None if self.loss is None else self.loss.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state['strategy'] != self.strategy.name:
            self.strategy = make_strategy(state['strategy'])
        self.strategy.load_state_dict(state['strategy_state'])
        self.settings = AttackSettings(**state['settings'])
        self.history = list(state['history'])
        self.loss = make_training_loss(state.get('loss'))
