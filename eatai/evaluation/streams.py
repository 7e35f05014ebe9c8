"""Random starts drawn per point, so that a point's verdict does not depend on its batch.

A threat of eatai's own draws from `point_generators` directly.

pyautoattack seeds the global RNG once per attack call and draws the random starts of the
whole (sub-)batch from it: row i's start then depends on how many points came before it
and which. `PointStreams` is a `TorchFunctionMode` that fills every such draw row by row,
row i from a generator of its own keyed to the seed, the attack and the point's content
(its pixels and label). A point takes part in a draw only while the attack still works on
it, so its sequence of draws depends on its own history alone: the same in any batch, any
chunk, any shard, any order. Draws that are not per row (Square's square positions, one per
iteration for the whole batch) keep coming from the global RNG that pyautoattack seeds;
they do not depend on the batch either: every iteration draws the same count, and AutoAttack
runs Square with one restart (a second restart would start where the first one's early stop
left the stream). The row of a draw is known from the sub-batch the attack took of the clean
points it was given (`x[idx]`, which the mode watches): pyautoattack's attacks draw for the
points they still work on, in that order. A point's pixels and label being its identity, two
identical examples share a stream, and so a verdict.
"""
from __future__ import annotations

import functools
import hashlib

import torch
from torch.overrides import TorchFunctionMode

__all__ = ['PointStreams', 'point_generators']

_DRAWS = {torch.rand: torch.rand, torch.randn: torch.randn,
          torch.rand_like: torch.rand, torch.randn_like: torch.randn}
_GETITEM = torch.Tensor.__getitem__
_WATCHED = frozenset([*_DRAWS, _GETITEM])
# where pyautoattack draws per-row starts: APGD (restarts, l1's schedule), Square, FAB (restarts > 1)
_METHODS = ('attack_single_run', 'decr_eps_pgd')


def _point_keys(x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """One key per row: a hash of its pixels (as float32) and its label."""
    rows = x.detach().float().cpu().contiguous().reshape(x.shape[0], -1).numpy()
    labels = y.detach().cpu().reshape(-1).tolist()
    return [hashlib.blake2b(row.tobytes() + str(label).encode(), digest_size=16).hexdigest()
            for row, label in zip(rows, labels)]


def _seeded(key: str) -> torch.Generator:
    """A CPU generator seeded from a hash of `key`."""
    return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), 'little'))


def point_generators(salt: str, x: torch.Tensor, y: torch.Tensor) -> list[torch.Generator]:
    """One CPU generator per row of x (N, ...), keyed to `salt` (seed, threat, attack) and the row's pixels
    and label: a point draws the same numbers in any batch."""
    return [_seeded(f"{salt}|{key}") for key in _point_keys(x, y)]


def _size(func, args, kwargs) -> tuple[int, ...]:
    if func in (torch.rand_like, torch.randn_like):
        return tuple(args[0].shape)
    size = args[0] if len(args) == 1 and not isinstance(args[0], int) else args
    return tuple(int(s) for s in (kwargs.get('size', size)))


class _Frame:
    """The clean points an attack call works on, and the rows of its current sub-batch."""

    def __init__(self, source: torch.Tensor, keys: list[str]):
        self.source, self.keys, self.rows = source, keys, keys

    def select(self, index) -> None:
        first = index[0] if isinstance(index, tuple) and index else index
        if isinstance(first, torch.Tensor):
            first = first.cpu()
            picked = first.nonzero().reshape(-1) if first.dtype == torch.bool else first.reshape(-1)
            self.rows = [self.keys[i] for i in picked.tolist()]
        elif isinstance(first, slice):
            self.rows = self.keys[first]
        elif isinstance(first, int):
            self.rows = [self.keys[first]]


class PointStreams(TorchFunctionMode):
    """Per-point random draws for pyautoattack's attacks; `salt` (seed, threat) keys them.

    Use: `streams.wrap(attack, name)` for each attack object that draws random starts; the
    mode is active only while the wrapped single runs of that attack execute. One instance per
    group of attacks that pyautoattack would reseed."""

    def __init__(self, salt: str):
        super().__init__()
        self.salt = salt
        self.generators: dict[str, torch.Generator] = {}
        self.frames: list[_Frame] = []
        self.name = ''

    def wrap(self, attack, name: str) -> None:
        """Make `attack`'s single runs announce their points (instance attributes only)."""
        for method in _METHODS:
            if hasattr(attack, method):
                setattr(attack, method, self._announcing(getattr(attack, method), name))

    def _announcing(self, method, name: str):
        @functools.wraps(method)
        def run(x, y, *args, **kwargs):
            outer, outer_name = not self.frames, self.name
            self.frames.append(_Frame(x, _point_keys(x, y)))
            self.name = name
            try:
                if not outer:          # l1's decr_eps_pgd calling attack_single_run: already active
                    return method(x, y, *args, **kwargs)
                with self:             # active only inside the attacks' single runs: less overhead
                    return method(x, y, *args, **kwargs)
            finally:
                self.frames.pop()
                self.name = outer_name
        return run

    def _generator(self, key: str) -> torch.Generator:
        full = f"{self.salt}|{self.name}|{key}"
        if full not in self.generators:
            self.generators[full] = _seeded(full)
        return self.generators[full]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # called for every torch call while active: the common path is one set lookup
        if func in _WATCHED and self.frames:
            out = self._watched(func, args, kwargs or {})
            if out is not None:
                return out
        return func(*args, **(kwargs or {}))

    def _watched(self, func, args, kwargs):
        frame = self.frames[-1]
        if func is _GETITEM:
            if args[0] is frame.source:
                frame.select(args[1])
            return None
        if kwargs.get('generator') is not None:
            return None
        size = _size(func, args, kwargs)
        if len(size) == frame.source.dim() and size and size[0] == len(frame.rows):
            return self._per_row(func, size, args, kwargs, frame.rows)
        return None   # not one row per point (Square's square positions): the seeded global RNG

    def _per_row(self, func, size, args, kwargs, rows):
        like = args[0] if func in (torch.rand_like, torch.randn_like) else None
        dtype = kwargs.get('dtype') or (like.dtype if like is not None else torch.get_default_dtype())
        device = kwargs.get('device') or (like.device if like is not None else None)
        draw = _DRAWS[func]
        # drawn on the CPU, as pyautoattack does before moving them: the same numbers on any device
        out = torch.stack([draw(size[1:], generator=self._generator(key), dtype=dtype) for key in rows])
        return out.to(device) if device is not None else out
