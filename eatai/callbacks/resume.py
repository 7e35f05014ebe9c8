"""Checkpoints that let an interrupted run (even kill -9 mid-epoch) resume and end with the
same numbers as an uninterrupted run with the same seed.

`Checkpointing(path, every=50)` saves, atomically, every `every` training batches and at each
epoch end: model, optimiser, position (epoch, batches done), the adversarial-training state
(strategy statistics and its generator, epoch counters, history), the recorder, and the random
states, both current and at the start of the epoch, and the state of every callback with a
`resume_state()` / `load_resume_state(state)` pair (e.g. `GradientProjection`). Run the same fit again with
`resume=True`: epochs already done are skipped, the interrupted epoch is replayed from its
start random state with the finished batches skipped before any attack, and training goes on
from the saved state.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback, CancelBatchException, CancelEpochException
from fastai.torch_core import get_model

from .._utils.dist import is_main_process
from .._utils.io import atomic_torch_save
from .adversarial import AdversarialTraining

__all__ = ['Checkpointing']

_FORMAT = 'eatai-resume-1'


def _rng_state() -> dict:
    state = {'torch': torch.get_rng_state(), 'python': random.getstate(), 'numpy': np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class _SkipDone(Callback):
    """During a resumed epoch: drop the batches already trained on, before any attack runs."""
    order, run_valid = -5, False

    def __init__(self, n_done: int, on_done):
        self.n_done, self.on_done = n_done, on_done

    def before_batch(self):
        if self.iter < self.n_done:
            self.learn.yb = ()        # nothing for the recorder to count
            raise CancelBatchException()

    def after_batch(self):
        if self.iter == self.n_done - 1:
            self.on_done()


class Checkpointing(Callback):
    """Save what a run needs to resume exactly; with `resume=True`, continue from `path`."""
    order, run_valid = 95, False   # after the recorder (50) and the schedulers (60) updated

    def __init__(self, path, every: int = 50, resume: bool = False):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.path, self.every, self.resume = Path(path), every, resume

    # --- saving -------------------------------------------------------------------------------
    def _adversary(self) -> AdversarialTraining | None:
        return next((cb for cb in self.learn.cbs if isinstance(cb, AdversarialTraining)), None)

    def _resumables(self) -> dict:
        """The callbacks that keep state of their own for a resumption, by name."""
        return {cb.name: cb for cb in self.learn.cbs if hasattr(cb, 'resume_state')}

    def _state(self, epoch: int, n_done: int, epoch_start: dict) -> dict:
        rec, adv = self.learn.recorder, self._adversary()
        return {
            'format': _FORMAT, 'epoch': epoch, 'n_done': n_done, 'n_epoch': self.n_epoch,
            'model': get_model(self.model).state_dict(), 'opt': self.opt.state_dict(),
            'adversary': None if adv is None else {**adv.state_dict(), 'counts': adv.epoch_counts()},
            'recorder': {'values': list(rec.values), 'losses': list(rec.losses), 'lrs': list(rec.lrs),
                         'iters': list(rec.iters), 'smooth': (rec.smooth_loss.count, rec.smooth_loss.val)},
            'rng': _rng_state(), 'epoch_start': epoch_start,
            'callbacks': {name: cb.resume_state() for name, cb in self._resumables().items()},
        }

    def _save(self, epoch: int, n_done: int, epoch_start: dict) -> None:
        if is_main_process():   # every process holds the same state in a DDP run: rank 0 writes it
            atomic_torch_save(self._state(epoch, n_done, epoch_start), self.path)

    def before_fit(self):
        self._skip_until = 0   # batches of the current epoch that a resume replays without training
        self._skipped = False  # the current epoch was finished before the interruption
        self._loaded = self._load() if self.resume and self.path.exists() else None

    def before_train(self):
        self._epoch_start = {'rng': _rng_state(), 'dl': self.dl.rng.getstate()}
        if self._loaded is not None and self.epoch == self._loaded['epoch']:
            self._start_resumed_epoch()

    def after_batch(self):
        done = self.iter + 1
        if done > self._skip_until and done % self.every == 0 and done < self.n_iter:
            self._save(self.epoch, done, self._epoch_start)

    def after_epoch(self):
        if self._skipped:
            return
        self._skip_until = 0
        # the next epoch starts from the random state of now (validation consumed its share)
        self._save(self.epoch + 1, 0, {'rng': _rng_state(), 'dl': self.dls.train.rng.getstate()})

    # --- resuming -------------------------------------------------------------------------------
    def _load(self) -> dict:
        state = torch.load(self.path, map_location='cpu', weights_only=False)
        if not isinstance(state, dict) or state.get('format') != _FORMAT:
            raise ValueError(f"{self.path} is not an eatai resume checkpoint")
        if state['n_epoch'] != self.n_epoch:
            raise ValueError(f"{self.path} was saved by a run of {state['n_epoch']} epochs, this fit has "
                             f"{self.n_epoch}: resume with the same call that was interrupted")
        get_model(self.model).load_state_dict(state['model'])
        self.opt.load_state_dict(state['opt'])
        adv = self._adversary()
        if (state['adversary'] is None) != (adv is None):
            raise ValueError(f"{self.path} and this fit disagree on adversarial training: resume with the same call")
        if adv is not None:
            adv.load_state_dict(state['adversary'])
        if set(state.get('callbacks', {})) != set(self._resumables()):
            raise ValueError(f"{self.path} was saved with the callbacks {sorted(state.get('callbacks', {}))}, this fit "
                             f"has {sorted(self._resumables())}: resume with the same call")
        return state

    def before_epoch(self):
        self._skipped = self._loaded is not None and self.epoch < self._loaded['epoch']
        if self._skipped:
            raise CancelEpochException()   # finished before the interruption

    def _start_resumed_epoch(self):
        """Replay the interrupted epoch's data order; skip the batches already done."""
        state = self._loaded
        _set_rng_state(state['epoch_start']['rng'])
        self.dl.rng.setstate(state['epoch_start']['dl'])
        self._epoch_start = state['epoch_start']
        self._restore_recorder(state['recorder'])
        if state['n_done'] == 0:
            self._finish_resume()
            return
        self._skip_until = state['n_done']
        self.learn.add_cb(_SkipDone(state['n_done'], self._finish_resume))

    def _restore_recorder(self, saved: dict) -> None:
        rec = self.learn.recorder
        rec.values, rec.losses, rec.lrs, rec.iters = (list(saved[k]) for k in ('values', 'losses', 'lrs', 'iters'))
        rec.smooth_loss.count, rec.smooth_loss.val = saved['smooth']

    def _finish_resume(self):
        """After the skipped batches: the state of the moment of the checkpoint."""
        state, self._loaded = self._loaded, None
        _set_rng_state(state['rng'])
        self._restore_recorder(state['recorder'])
        adv = self._adversary()
        if adv is not None:   # set_epoch at the start of the epoch reset the strategy's epoch counters
            adv.load_state_dict(state['adversary'])
            if state['n_done']:
                adv.set_epoch_counts(state['adversary']['counts'])
            else:   # saved at the previous epoch's end: its counters are that epoch's, start this one afresh
                adv.strategy.set_epoch(self.epoch)
        for name, cb in self._resumables().items():   # after their before_train, which started afresh
            cb.load_resume_state(state['callbacks'][name])
        for cb in [cb for cb in self.learn.cbs if isinstance(cb, _SkipDone)]:
            self.learn.remove_cb(cb)

    def after_fit(self):
        for cb in [cb for cb in self.learn.cbs if isinstance(cb, _SkipDone)]:
            self.learn.remove_cb(cb)
