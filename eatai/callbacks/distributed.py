"""Distributed data parallel training on the engines users have: fastai's `DistributedTrainer`
over Accelerate, under `torchrun` or `accelerate launch`, on GPUs (nccl) and on CPUs (gloo).

fastai's `DistributedDL` broadcasts the shuffled indices as CUDA tensors, so on CPU (gloo) it
cannot run; `_GlooDL` only changes that broadcast. `learn.robust_distrib_ctx()` is fastai's
`distrib_ctx` with that data loader, SyncBatchNorm where CUDA is, and Accelerate told to use
the CPU where there is no GPU. The strategies and the evaluation do their own syncing
(E-AT statistics all-reduced, evaluation sharded and gathered); only rank 0 prints and writes.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from fastai.callback.progress import ProgressCallback
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.learner import Learner
from fastai.torch_core import num_distrib, rank_distrib
from fastcore.basics import patch

from .._utils.dist import collective_device, is_distributed, is_main_process

__all__ = ['RobustDistributedTrainer', 'is_distributed', 'is_main_process']


class _GlooDL(DistributedDL):
    """fastai's DistributedDL with an index broadcast that also works on CPU (gloo)."""

    def _broadcast(self, t, rank):
        t = torch.tensor(t, dtype=torch.long, device=collective_device())
        dist.broadcast(t, rank)
        return t.cpu().tolist()


class RobustDistributedTrainer(DistributedTrainer):
    """fastai's DistributedTrainer, with `_GlooDL` and the model's own device."""

    def _wrap_dl(self, dl):
        if isinstance(dl, DistributedDL):
            return dl
        device = next(self.learn.model.parameters()).device
        return _GlooDL(dl, device=device)


@patch
@contextmanager
def robust_distrib_ctx(self: Learner, sync_bn: bool | None = None, **kwargs):
    """fastai's `distrib_ctx` that also runs on CPU: train with DDP when launched by torchrun or
    `accelerate launch` with more than one process, as it is otherwise."""
    distributed = num_distrib() > 1
    if distributed:
        cuda = torch.cuda.is_available()
        if not cuda:
            kwargs.setdefault('cpu', True)
        self.add_cb(RobustDistributedTrainer(cuda if sync_bn is None else sync_bn, **kwargs))
        if rank_distrib():
            self.remove_cb(ProgressCallback)
    try:
        yield self
    finally:
        if distributed:
            for cb in [cb for cb in self.cbs if isinstance(cb, RobustDistributedTrainer)]:
                self.remove_cb(cb)
