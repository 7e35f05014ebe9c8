"""Gradient projection (GP, RAMP `../../shared/paper/ramp-notes.md` item 4): each epoch is one
adversarial and one natural epoch from the same weights, combined per layer.

From the weights f_r at the start of an epoch the learner trains its normal (adversarial, any
scheme) epoch to f_a, and a copy trains a natural epoch (clean batches, plain cross-entropy) to
f_n. With g_a = f_a - f_r and g_n = f_n - f_r, per layer l
    cos_l = <g_n^l, g_a^l> / (|g_n^l| |g_a^l|),  GP^l = cos_l g_n^l if cos_l > 0 else 0,
    f_{r+1} = f_r + beta GP + (1 - beta) g_a,
and BatchNorm running statistics (all buffers) stay those of the adversarial model.

Choices, each for a reason:
- A "layer" is one parameter tensor (a conv's weight and its bias are two layers), the finest
  split the formula allows; parameters that do not train (g = 0) stay as they are.
- The natural epoch runs interleaved with the adversarial one, on the same clean batches (taken
  before the attack) and after each optimiser step with the same hyper-parameters (lr, momentum,
  wd as the schedulers set them for that batch). So it costs one clean forward and backward per
  batch and no extra pass over the data, fires no fastai event (recorder, metrics and other
  callbacks never see it) and needs no replay of the schedule on resumption.
- The natural copy's optimiser starts each epoch from a copy of the learner's optimiser state
  (momentum buffers) at that epoch's start; the learner keeps its own, adversarial, state: the
  adversarial run is exactly what it would be without GP, only the weights are combined.
- The natural pass draws its randomness (dropout) from its own generator, so the adversarial
  run's random stream is untouched: beta = 0 gives exactly the weights of a run without GP.
- In a DDP run each process trains its copy on its own shard and the copies' gradients are
  averaged across processes, as DDP averages the learner's: every process combines the same
  f_r, f_a and f_n.
- Under fastai's `MixedPrecision` with bf16 the natural forward runs under bf16 autocast, as the
  training forward; otherwise (fp32, or fp16, which would need a loss scaler) in fp32. The natural
  step follows every training batch that reached the optimiser step, even one whose step fp16's
  loss scaler skipped.
"""
from __future__ import annotations

import copy
import math
import numbers

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.torch_core import get_model

from .._utils.dist import all_reduce_mean_, all_reduce_sum
from .adversarial import AdversarialTraining

__all__ = ['GradientProjection', 'project_update']


def project_update(f_r: torch.Tensor, f_a: torch.Tensor, f_n: torch.Tensor, beta: float) -> tuple[torch.Tensor, float]:
    """GP's combination for one layer (tensors of one shape): (f_{r+1}, cos between g_n and g_a).

    Written as f_a + beta (GP - g_a), equal to f_r + beta GP + (1 - beta) g_a, so that beta = 0
    returns f_a bit for bit. cos is 0 where either update is zero.
    """
    g_a, g_n = (f_a - f_r).double(), (f_n - f_r).double()
    denom = g_a.norm() * g_n.norm()
    cos = float(g_a.flatten() @ g_n.flatten() / denom) if denom > 0 else 0.0
    gp = cos * g_n if cos > 0 else torch.zeros_like(g_n)
    if beta == 0:
        return f_a.clone(), cos
    return (f_a.double() + beta * (gp - g_a)).to(f_a.dtype), cos


def _to_device(obj, device):
    """obj with every tensor in its dicts and lists moved to `device` (a checkpoint is loaded on the CPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


class _OwnRandom:
    """A random stream of its own (CPU and the model's CUDA device), swapped in around a block."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device if device.type == 'cuda' else None
        self.state = {'cpu': torch.Generator().manual_seed(seed).get_state()}
        if self.device is not None:
            self.state['cuda'] = torch.Generator(device=self.device).manual_seed(seed).get_state()

    def __enter__(self):
        self._outer = {'cpu': torch.get_rng_state()}
        torch.set_rng_state(self.state['cpu'])
        if self.device is not None:
            self._outer['cuda'] = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self.state['cuda'], self.device)

    def __exit__(self, *exc):
        self.state['cpu'] = torch.get_rng_state()
        torch.set_rng_state(self._outer['cpu'])
        if self.device is not None:
            self.state['cuda'] = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self._outer['cuda'], self.device)


class GradientProjection(Callback):
    """RAMP's gradient projection with any training scheme: `cbs=GradientProjection(beta=0.5)`.

    `history` keeps, per epoch, the mean natural loss, the mean cosine over layers and the share
    of layers whose natural update was kept (cos > 0).
    """
    # Before AdversarialTraining swaps the clean batch for the adversarial one (its order - 1).
    order, run_valid = AdversarialTraining.order - 1, False

    def __init__(self, beta: float = 0.5):
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta <= 1:
            raise ValueError(f"beta must be a number in [0, 1] (the weight of the projected natural update; "
                             f"RAMP uses 0.5), got {beta!r}")
        self.beta = float(beta)
        self.history: list[dict] = []
        self._round = None

    # --- the natural pass -----------------------------------------------------------------------
    def _bare(self) -> torch.nn.Module:
        return get_model(self.learn.model)

    def _autocast(self):
        mp = next((cb for cb in self.learn.cbs if isinstance(cb, MixedPrecision)), None)
        device = next(self._bare().parameters()).device
        enabled = mp is not None and mp.amp_mode == AMPMode.BF16
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    def before_fit(self):
        self.history = []   # a new fit, a new history (a resumed one gets its own back from the checkpoint)
        device = next(self._bare().parameters()).device
        # seeded from the run's seed without drawing from (and so shifting) its random stream
        self._random = _OwnRandom(torch.initial_seed() + 1, device)
        self._round = None

    def before_train(self):
        """Snapshot f_r; the natural copy and its optimiser start from the learner's."""
        bare, memo = self._bare(), {}
        model = copy.deepcopy(bare, memo)        # the same memo maps the optimiser to the copy's parameters
        opt = copy.deepcopy(self.learn.opt, memo)
        opt.zero_grad()
        self._round = {'f_r': {k: p.detach().clone() for k, p in bare.named_parameters()},
                       'model': model, 'opt': opt, 'loss': 0.0, 'n': 0}

    def before_batch(self):
        self._clean = (self.xb[0], self.yb[0])   # before the attack replaces them

    def after_step(self):
        """One natural step on the clean batch, with this batch's hyper-parameters."""
        r, (x, y) = self._round, self._clean
        model, opt = r['model'], r['opt']
        x, y = x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)
        with self._random, self._autocast():
            loss = F.cross_entropy(model(x), y)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"the natural loss of gradient projection became {loss.item()} at epoch "
                                     f"{self.epoch}, batch {self.iter}; lower the learning rate")
        with self._random:
            loss.backward()
        all_reduce_mean_([p.grad for p in model.parameters() if p.grad is not None])
        for k, v in self.learn.opt.hypers[0].items():
            opt.set_hyper(k, [h[k] for h in self.learn.opt.hypers])
        opt.step()
        opt.zero_grad()
        r['loss'] += loss.detach().float() * len(y)
        r['n'] += len(y)

    # --- the combination ------------------------------------------------------------------------
    def after_train(self):
        r, self._round = self._round, None
        natural = dict(r['model'].named_parameters())
        cosines = []
        with torch.no_grad():
            for name, p in self._bare().named_parameters():
                if not p.requires_grad:
                    continue
                new, cos = project_update(r['f_r'][name], p, natural[name], self.beta)
                p.copy_(new)
                cosines.append(cos)
        loss, n = all_reduce_sum(torch.tensor([float(r['loss']), float(r['n'])])).tolist()
        self.history.append({'epoch': self.epoch, 'nat_loss': loss / n if n else math.nan,
                             'cos_mean': sum(cosines) / len(cosines) if cosines else math.nan,
                             'kept': sum(c > 0 for c in cosines) / len(cosines) if cosines else math.nan})

    def after_fit(self):
        self._round = None   # free the copies

    # --- resumption (see `Checkpointing`) -------------------------------------------------------
    def resume_state(self) -> dict:
        """What an exact resumption mid-epoch needs: f_r, the natural copy, its optimiser, its
        random stream and its running loss, with the history."""
        r = self._round
        round_state = None if r is None else {
            'f_r': r['f_r'], 'model': r['model'].state_dict(), 'opt': r['opt'].state_dict(),
            'loss': float(r['loss']), 'n': r['n']}
        return {'beta': self.beta, 'random': dict(self._random.state), 'history': list(self.history),
                'round': round_state}

    def load_resume_state(self, state: dict) -> None:
        if state['beta'] != self.beta:
            raise ValueError(f"the checkpoint was saved with GradientProjection(beta={state['beta']}), this fit "
                             f"has beta={self.beta}: resume with the same call")
        self._random.state = dict(state['random'])
        self.history = list(state['history'])
        saved = state['round']
        if saved is None:       # saved at an epoch's end: before_train took the right snapshot
            return
        device = next(self._bare().parameters()).device
        r = self._round
        r['f_r'] = {k: v.to(device) for k, v in saved['f_r'].items()}
        r['model'].load_state_dict(saved['model'])
        r['opt'].load_state_dict(_to_device(copy.deepcopy(saved['opt']), device))
        r['loss'], r['n'] = saved['loss'], saved['n']
