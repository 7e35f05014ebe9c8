"""torch.distributed helpers that every layer may use (torch only): is this a process group,
which rank prints, and the few collectives eatai needs. All are no-ops in a single process."""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ['is_distributed', 'is_main_process', 'rank_and_world', 'collective_device', 'all_reduce_sum',
           'all_reduce_mean_', 'broadcast_int', 'gather_objects']


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes files."""
    return not is_distributed() or dist.get_rank() == 0


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def collective_device() -> torch.device:
    """Where tensors for collectives live: the GPU for nccl, the CPU for gloo."""
    return torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else torch.device('cpu')


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over all processes, as float64 on the CPU."""
    if not is_distributed():
        return values.double().cpu()
    t = values.detach().double().to(collective_device())
    dist.all_reduce(t)
    return t.cpu()


def all_reduce_mean_(tensors: list) -> None:
    """Average each tensor over all processes, in place (as DDP averages gradients), in one collective."""
    if not is_distributed() or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(collective_device()) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank `src`'s `value` on every process."""
    if not is_distributed():
        return value
    t = torch.tensor([int(value)], dtype=torch.long, device=collective_device())
    dist.broadcast(t, src)
    return int(t.item())


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process ([obj] in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
