"""Building models by name and eatai's own checkpoint format (architecture + weights + normalisation)."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from .._io import atomic_torch_save
from .normalize import Normalized

__all__ = ['build_model', 'save_checkpoint', 'load_checkpoint', 'is_eatai_checkpoint']

_FORMAT = 'eatai-checkpoint-1'


def build_model(arch: str, num_classes: int, mean=None, std=None, **kwargs) -> nn.Module:
    """A timm model by name, wrapped so it takes [0,1] inputs: normalisation from `mean`/`std`,
    else from the model's pretrained config."""
    try:
        model = timm.create_model(arch, num_classes=num_classes, **kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(f"unknown architecture {arch!r}: give a timm model name (timm.list_models()), "
                             "an nn.Module or a checkpoint path") from None
        raise
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    mean = cfg.get('mean') if mean is None else mean
    std = cfg.get('std') if std is None else std
    if mean is None or std is None:
        raise ValueError(f"{arch} has no mean/std in its config: pass mean=... and std=...")
    return Normalized(model, mean, std)


def save_checkpoint(model: nn.Module, path, arch: str, arch_kwargs: dict | None = None, meta: dict | None = None) -> Path:
    """Save a model built by `build_model(arch, **arch_kwargs)` so `load_checkpoint` can rebuild it."""
    model = getattr(model, 'module', model)
    if not isinstance(model, Normalized):
        raise TypeError("save_checkpoint expects a model from build_model (a Normalized wrapper)")
    arch_kwargs = dict(arch_kwargs or {})
    arch_kwargs.setdefault('num_classes', getattr(model.model, 'num_classes', None))
    if arch_kwargs['num_classes'] is None:
        raise ValueError("pass arch_kwargs={'num_classes': ...}: the model does not say how many classes it has")
    state = {'format': _FORMAT, 'arch': arch, 'arch_kwargs': arch_kwargs,
             'mean': model.mean.flatten().tolist(), 'std': model.std.flatten().tolist(),
             'state_dict': {k: v.detach().cpu() for k, v in model.model.state_dict().items()},
             'meta': dict(meta or {})}
    return atomic_torch_save(state, path)


def is_eatai_checkpoint(state) -> bool:
    return isinstance(state, dict) and state.get('format') == _FORMAT


def load_checkpoint(path, map_location='cpu') -> nn.Module:
    """Rebuild a model saved by `save_checkpoint`; its `meta` dict is attached as `.meta`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not is_eatai_checkpoint(state):
        raise ValueError(f"{path} is not an eatai checkpoint (no 'format': {_FORMAT!r})")
    kwargs = dict(state['arch_kwargs'])
    num_classes = kwargs.pop('num_classes')
    model = build_model(state['arch'], num_classes, state['mean'], state['std'], **kwargs)
    model.model.load_state_dict(state['state_dict'])
    model.meta = state['meta']
    return model
