"""Count host-device synchronisations: the calls that make the host wait for the device.

A GPU runs kernels asynchronously; the host only waits when it needs a value back (`item`,
`bool(t)`, `int(t)`, `tolist`, a copy to the CPU), a shape that depends on the data (`nonzero`,
one-argument `torch.where`, boolean-mask indexing, `unique`, ...), or copies host data to the
device (`torch.tensor(v, device=x.device)`). Each such call drains the device's queue, so an
attack loop should make none. `count_host_syncs()` records them with a `TorchFunctionMode`, so
it counts on the CPU too, where nothing actually waits:

    with count_host_syncs() as syncs:
        apgd(model, x, y, 'l1', 12.0)
    syncs.total, syncs.by_kind()   # e.g. 2, {'tolist': 1, '__bool__': 1}

Only calls that reach `__torch_function__` at the top level are seen: a sync inside a C++ kernel
that is not listed here, or inside a torch function written in Python, is not counted. On the
CPU, a value read back from a tensor that would live on the CPU anyway (a CPU generator's draw)
counts too.
"""
from __future__ import annotations

import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

__all__ = ['HostSync', 'HostSyncCounter', 'count_host_syncs', 'sync_kind', 'SYNC_METHODS']

# Calls that always bring a value, or a data-dependent shape, back to the host.
SYNC_METHODS = frozenset({
    'item', 'tolist', 'numpy', 'cpu', '__bool__', '__int__', '__float__', '__index__', '__complex__', '__array__',
    '__format__', '__contains__', 'is_nonzero', 'nonzero', 'argwhere', 'masked_select', 'unique',
    'unique_consecutive', 'bincount', 'allclose', 'equal',
})
_INDEXING = frozenset({'__getitem__', '__setitem__', 'index', 'index_put', 'index_put_'})
_FACTORIES = frozenset({'tensor', 'as_tensor', 'asarray'})
_THIS_FILE = __file__


@dataclass(frozen=True)
class HostSync:
    """One synchronising call: its kind (e.g. 'item', 'nonzero', 'bool_mask_index') and, when
    recorded, the innermost frame outside torch and this module ('file:line in function')."""
    kind: str
    where: str | None = None


def _name(func) -> str:
    return getattr(func, '__name__', None) or str(func)


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _copies_to_cpu(args, kwargs) -> bool:
    """`t.to(<the CPU>)` for a t on another device (`to(x.device)` is a no-op in a CPU run)."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].device.type == 'cpu':
        return False
    targets = [*args[1:], kwargs.get('device')]
    return any((isinstance(t, (str, torch.device)) and torch.device(t).type == 'cpu')
               or (isinstance(t, torch.Tensor) and t.device.type == 'cpu') for t in targets)


def _copies_from_host(args, kwargs) -> bool:
    """`torch.tensor(v, device=d)` for host data v and a device d given as a torch.device (as
    `x.device` is): a copy from pageable host memory waits for d's queue. A literal 'cpu' is not counted."""
    if not args or isinstance(args[0], torch.Tensor):
        return False
    device = kwargs.get('device')
    return isinstance(device, torch.device) or (isinstance(device, (str, int)) and device != 'cpu')


def sync_kind(func, args, kwargs) -> str | None:
    """The kind of host sync the call `func(*args, **kwargs)` makes, or None."""
    name = _name(func)
    if name in SYNC_METHODS:
        return name
    if name == 'where' and len(args) + len(kwargs) == 1:
        return 'where(cond)'
    if name in _INDEXING and len(args) >= 2 and _has_bool_index(args[1]):
        return 'bool_mask_index'
    if name == 'repeat_interleave' and len(args) >= 2 and isinstance(args[1], torch.Tensor) \
            and kwargs.get('output_size') is None:
        return 'repeat_interleave'
    if name == 'to' and _copies_to_cpu(args, kwargs):
        return 'to_host'
    if name in _FACTORIES and _copies_from_host(args, kwargs):
        return 'from_host'
    return None


def _caller() -> str:
    """The innermost frame that is neither torch's nor this module's."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename != _THIS_FILE and '/torch/' not in frame.filename:
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return '?'


class HostSyncCounter(TorchFunctionMode):
    """A TorchFunctionMode recording every synchronising call made under it (see `sync_kind`).

    `record_where=True` also keeps where each sync was made (slower)."""

    def __init__(self, record_where: bool = False):
        super().__init__()
        self.record_where = record_where
        self.syncs: list[HostSync] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = sync_kind(func, args, kwargs)
        if kind is not None:
            self.syncs.append(HostSync(kind, _caller() if self.record_where else None))
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return len(self.syncs)

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(s.kind for s in self.syncs))

    def by_place(self) -> dict[str, int]:
        """Counts per kind and caller ('kind at file:line in function'); needs record_where=True."""
        return dict(Counter(f"{s.kind} at {s.where}" for s in self.syncs))


@contextmanager
def count_host_syncs(record_where: bool = False):
    """Context manager yielding a `HostSyncCounter` that counts the host syncs made inside it."""
    counter = HostSyncCounter(record_where)
    with counter:
        yield counter
